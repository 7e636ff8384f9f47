"""Posters stage: on a title built from real photographs (faces, text cards, colour bars, blur, dark, black),
the top candidates are sharp, text-free frames with faces, and their crops hold the faces."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data

from prism.media.tools import ffmpeg_exe
from prism.stages.posters import (
    ASPECTS,
    CHIN_ROOM,
    HEAD_ROOM,
    PostersParams,
    crop_box,
    looks_like_bars,
    qc_spans,
    text_lines,
)
from prism.vision.faces import Face, FaceDetection
from prism.vision.text import TextBox, TextDetection
from testkit.poster_title import build_poster_title


@pytest.fixture(scope="module")
def poster_run(tmp_path_factory):
    from prism.runner import Runner

    work = tmp_path_factory.mktemp("posters")
    path = work / "poster.mp4"
    truth = build_poster_title(path)
    out = work / "out"
    [outcome] = Runner(out).run([path], ["posters"])
    return out / "titles" / "poster", truth, outcome, path, out


def _shot_at(truth, t):
    return next(s for s in truth if s.start_s <= t < s.end_s)


def _inside(inner, outer, tol=1e-4) -> bool:
    return (
        outer[0] - tol <= inner[0]
        and outer[1] - tol <= inner[1]
        and inner[2] <= outer[2] + tol
        and inner[3] <= outer[3] + tol
    )


@pytest.mark.slow
def test_top_candidates_are_sharp_text_free_faces_and_crops_hold_them(poster_run):
    tdir, truth, outcome, _, _ = poster_run
    assert outcome.status == "succeeded", outcome
    rows = pq.read_table(tdir / "poster_candidates.parquet").to_pylist()
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    kinds = [_shot_at(truth, r["time_s"]).kind for r in rows]
    assert not {"bars", "text", "dark", "black"} & set(kinds), kinds  # nothing from bars, slates, subtitles, credits
    assert kinds[:3] == ["face"] * 3, kinds  # the three sharp face shots lead
    assert {_shot_at(truth, r["time_s"]).name for r in rows[:3]} == {"astronaut", "camera", "astronaut-wide"}
    if "blur" in kinds:  # the defocused cameraman may be dropped as a near-duplicate; never above the sharp one
        assert kinds.index("blur") > [_shot_at(truth, r["time_s"]).name for r in rows].index("camera")
    for r in rows[:3]:
        shot = _shot_at(truth, r["time_s"])
        [face] = shot.faces_at(r["time_s"])
        box = tuple(r["face_boxes"][:4])
        ix = max(0.0, min(box[2], face[2]) - max(box[0], face[0])) * max(
            0.0, min(box[3], face[3]) - max(box[1], face[1])
        )
        union = (box[2] - box[0]) * (box[3] - box[1]) + (face[2] - face[0]) * (face[3] - face[1]) - ix
        assert ix / union > 0.4, (shot.name, box, face)  # the detected face is the photograph's face
        assert r["text_coverage"] <= PostersParams().max_text_coverage
        assert r["face_count"] == 1 and 0 < r["largest_face_share"] < 0.2
        fh = face[3] - face[1]
        room = (face[0], max(0.0, face[1] - 0.5 * fh), face[2], min(1.0, face[3] + 0.25 * fh))
        for name in ASPECTS:
            crop = r[f"crop_{name}"]
            assert _inside(room, crop), (shot.name, name, crop, room)  # the face and its head room
            w, h = (crop[2] - crop[0]) * r["width"], (crop[3] - crop[1]) * r["height"]
            assert w / h == pytest.approx(ASPECTS[name], rel=0.01)
        assert "face" in r["reason"] and f"#{r['rank']}" in r["reason"]
    scores = [r["score"] for r in rows]
    assert scores[0] == max(scores)
    assert min(r["sharpness"] for r in rows[:3]) > 50


@pytest.mark.slow
def test_candidate_jpegs_are_the_keyframes_exact_seek_frames(poster_run):
    tdir, _, outcome, _, _ = poster_run
    rows = pq.read_table(tdir / "poster_candidates.parquet").to_pylist()
    keyframes = {k["frame"]: k for k in pq.read_table(tdir / "keyframes.parquet").to_pylist()}
    manifest = json.loads((tdir / "manifest.json").read_text())
    listed = set(manifest["stages"]["posters"]["outputs"])
    for r in rows:
        assert (
            r["path"] in listed
            and (tdir / r["path"]).read_bytes() == (tdir / keyframes[r["frame"]]["path"]).read_bytes()
        )
        assert (r["width"], r["height"]) == (640, 360)
    metrics = manifest["stages"]["posters"]["metrics"]
    assert metrics["candidates"] == len(keyframes) and metrics["chosen"] == len(rows)


@pytest.mark.slow
def test_qc_findings_and_spoiler_guard_exclude_their_spans(poster_run):
    """A qc_findings.parquet (the QC stage's output) marking the astronaut shot as a slate removes it;
    exclude_last_percent removes the tail."""
    from prism.runner import Runner

    tdir, truth, _, path, out = poster_run
    astro = next(s for s in truth if s.name == "astronaut")
    pq.write_table(
        pa.table({"rule": ["slate", "loudness"], "start_s": [astro.start_s, 0.0], "end_s": [astro.end_s, 100.0]}),
        tdir / "qc_findings.parquet",
    )
    try:
        [outcome] = Runner(out, params={"posters": {"exclude_last_percent": 30.0}}).run([path], ["posters"])
    finally:
        (tdir / "qc_findings.parquet").unlink()
    assert outcome.status == "succeeded", outcome
    rows = pq.read_table(tdir / "poster_candidates.parquet").to_pylist()
    duration = truth[-1].end_s
    assert rows and all(not astro.start_s <= r["time_s"] < astro.end_s for r in rows)
    assert all(r["time_s"] < 0.7 * duration for r in rows)
    metrics = json.loads((tdir / "manifest.json").read_text())["stages"]["posters"]["metrics"]
    assert metrics["qc_findings_used"] == 1  # the loudness finding is no reason to drop a frame


def _face(x0, y0, x1, y1) -> Face:
    return Face(x0, y0, x1, y1, 0.9)


@pytest.mark.parametrize(
    "box", [(0.45, 0.3, 0.55, 0.5), (0.02, 0.05, 0.12, 0.3), (0.85, 0.6, 0.97, 0.9), (0.3, 0.0, 0.5, 0.4)]
)
@pytest.mark.parametrize("name", sorted(ASPECTS))
def test_crop_keeps_a_face_with_head_room_wherever_it_is(box, name):
    w, h = 1920, 1080
    det = FaceDetection((_face(*box),), w, h)
    crop = crop_box(det, w, h, ASPECTS[name])
    fh = box[3] - box[1]
    room = (box[0], max(0.0, box[1] - HEAD_ROOM * fh), box[2], min(1.0, box[3] + CHIN_ROOM * fh))
    assert _inside(room, crop), (crop, room)
    assert 0 <= crop[0] < crop[2] <= 1 and 0 <= crop[1] < crop[3] <= 1
    assert (crop[2] - crop[0]) * w / ((crop[3] - crop[1]) * h) == pytest.approx(ASPECTS[name], rel=1e-6)
    assert max(crop[2] - crop[0], crop[3] - crop[1]) == pytest.approx(1.0)  # the largest crop of that shape


def test_crop_without_faces_is_centred_and_far_apart_faces_keep_the_largest():
    assert crop_box(None, 1920, 1080, 1.0) == pytest.approx((0.21875, 0.0, 0.78125, 1.0))
    big, small = _face(0.05, 0.2, 0.2, 0.5), _face(0.9, 0.2, 0.95, 0.3)
    crop = crop_box(FaceDetection((big, small), 1920, 1080), 1920, 1080, 2 / 3)
    assert _inside((big.x0, big.y0, big.x1, big.y1), crop) and not _inside(
        (small.x0, small.y0, small.x1, small.y1), crop
    )


def _lavfi(source: str) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"{source}{':' if '=' in source else '='}size=640x360", "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(360, 640, 3)


@pytest.mark.parametrize("source", ["smptehdbars", "smptebars", "pal75bars", "pal100bars", "color=c=red"])
def test_colour_bars_and_flat_cards_are_recognised(source):
    assert looks_like_bars(_lavfi(source))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera"])
def test_photographs_are_not_bars(name):
    img = np.asarray(getattr(skimage.data, name)())
    assert not looks_like_bars(np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3])
    assert not looks_like_bars(_lavfi("testsrc2"))


def test_text_lines_keep_lines_and_drop_compact_texture():
    line, blob = TextBox(0.1, 0.8, 0.9, 0.9, 0.9), TextBox(0.4, 0.3, 0.45, 0.4, 0.9)
    kept = text_lines(TextDetection((line, blob)), 640, 360, 2.0)
    assert kept.boxes == (line,)


def test_qc_spans_read_parquet_or_json_and_name_bad_files(tmp_path):
    assert qc_spans(tmp_path, ("bars",)) == []
    (tmp_path / "qc.json").write_text(json.dumps({"findings": [
        {"rule": "colour_bars", "start_s": 0.0, "end_s": 2.0}, {"rule": "true_peak", "start_s": 1.0, "end_s": 3.0},
        {"rule": "end_credits", "start_s": 50.0, "end_s": 60.0}]}))  # fmt: skip
    assert qc_spans(tmp_path, ("bars", "credit")) == [(0.0, 2.0, "colour_bars"), (50.0, 60.0, "end_credits")]
    (tmp_path / "qc_findings.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception, match="qc_findings.parquet.*unreadable QC findings"):
        qc_spans(tmp_path, ("bars",))


def test_params_are_checked():
    from prism.errors import ConfigError
    from prism.stages.posters import PostersStage

    with pytest.raises(ConfigError, match="top_k"):
        PostersStage({"top_k": 0})
    with pytest.raises(ConfigError, match="exclude_last_percent"):
        PostersStage({"exclude_last_percent": 120})


@pytest.mark.slow
def test_report_shows_the_candidates_with_their_faces_and_crops(poster_run):
    import re

    from prism.report import render_report

    tdir = poster_run[0]
    rows = pq.read_table(tdir / "poster_candidates.parquet").to_pylist()
    html = render_report(tdir)
    panel = html[html.index('id="posters-panel"') : html.index('id="stages-panel"')]
    assert len(re.findall(r'class="poster-card"', panel)) == len(rows) > 0
    assert len(re.findall(r'class="poster-crop" data-crop=', panel)) == 3 * len(rows)
    assert len(re.findall(r'class="poster-face"', panel)) == sum(r["face_count"] for r in rows)
    first = rows[0]["crop_2x3"]
    assert f"left:{first[0] * 100:.2f}%;top:{first[1] * 100:.2f}%" in panel
    assert "data:image/" in panel and rows[0]["reason"][:20] in panel
