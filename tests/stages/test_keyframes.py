"""Keyframes stage: full-resolution JPEGs of good, distinct frames away from transitions."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from prism.media import decode_visual, ffmpeg_exe, probe
from prism.stages.keyframes import KeyframesParams, frame_scores, select_keyframes
from prism.synth import Shot, Title


def test_one_good_keyframe_per_visible_shot(sample_run):
    out, truth, _ = sample_run
    tdir = out / "titles" / "sample"
    shots = pq.read_table(tdir / "shots.parquet").to_pandas()
    kf = pq.read_table(tdir / "keyframes.parquet").to_pandas()
    black_shots = {
        i for i, r in shots.iterrows() if any(b[0] <= r.start_frame and r.end_frame <= b[1] + 2 for b in truth.black)
    }
    assert black_shots, "the sample has a black shot"
    assert set(kf.shot_index) == set(range(len(shots))) - black_shots
    for _, row in kf.iterrows():
        shot = shots.iloc[row.shot_index]
        assert shot.start_frame <= row.frame < shot.end_frame
        assert not shot.transition_start_frame <= row.frame < shot.transition_end_frame  # not inside a dissolve
        assert row.frame not in range(*truth.gradual[0]) and row.frame not in range(*truth.gradual[1])
        assert 0.0 <= row.quality <= 1.0 and row["rank"] == 0


def _frames_around(path, frame: int, width: int, height: int) -> np.ndarray:
    """Frames frame-2 .. frame+2 at full size, decoded exactly (test-only full decode)."""
    cmd = [
        ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", f"select='between(n,{frame - 2},{frame + 2})'",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3).astype(np.float32)


def test_keyframe_jpegs_are_full_resolution_and_show_their_frame(sample_run, sample_video):
    out, _, _ = sample_run
    tdir = out / "titles" / "sample"
    kf = pq.read_table(tdir / "keyframes.parquet").to_pandas()
    path, _ = sample_video
    for _, row in kf.iterrows():
        image = Image.open(tdir / row.path)
        assert image.format == "JPEG" and image.size == (row.width, row.height) == (320, 180)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        errors = [np.abs(pixels - f).mean() for f in _frames_around(path, row.frame, 320, 180)]
        assert errors[2] <= min(errors) + 1e-3, (row.frame, errors)  # ties only where the picture is frozen


def test_near_duplicates_are_not_repeated(sample_video, tmp_path):
    import pyarrow as pa

    path, _ = sample_video
    vp = decode_visual(path, probe(path), tmp_path)
    one_shot = pa.table(
        {"shot_index": [0], "start_frame": [0], "end_frame": [75], "duration_s": [3.0],
         "transition_start_frame": [0], "transition_end_frame": [0]}
    )  # fmt: skip
    quality = frame_scores(vp)["quality"]
    many = select_keyframes(
        vp, one_shot, KeyframesParams(max_per_shot=3, seconds_per_keyframe=1.0, duplicate_threshold=0.0), quality
    )
    assert len(many) == 3
    strict = select_keyframes(
        vp, one_shot, KeyframesParams(max_per_shot=3, seconds_per_keyframe=1.0, duplicate_threshold=255.0), quality
    )
    assert len(strict) == 1  # everything after the first pick counts as a duplicate


def _decode_all(path) -> np.ndarray:
    """Every frame at full size, decoded from the start (test-only exact reference)."""
    info = probe(path)
    width, height = info.video.display_size
    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]  # fmt: skip
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def _assert_jpegs_show_their_frames(tdir, path) -> pd.DataFrame:
    kf = pq.read_table(tdir / "keyframes.parquet").to_pandas()
    frames = _decode_all(path).astype(np.float32)
    assert len(kf) >= 1
    for _, row in kf.iterrows():
        with Image.open(tdir / row.path) as image:
            assert image.size == (row.width, row.height)
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        errors = np.array([np.abs(pixels - f).mean() if f.shape == pixels.shape else np.inf for f in frames])
        best = int(errors.argmin())
        assert errors[row.frame] <= errors[best] + 1e-3, (row.frame, best, errors[row.frame], errors[best])
    return kf


@pytest.mark.parametrize("variant", ["mkv", "webm", "ts", "ts-offset", "mp4-offset"])
def test_keyframes_are_the_frames_they_claim_in_other_containers(container_run, variant):
    """MPEG-TS has no index: a seek lands anywhere and the decoder skips to the next keyframe."""
    tdir, path, truth, outcome = container_run(variant)
    assert outcome.status == "succeeded", outcome
    kf = _assert_jpegs_show_their_frames(tdir, path)
    assert set(kf.shot_index) == {0, 1, 2}
    assert np.allclose(kf.time_s, kf.frame / truth.fps, atol=1e-3)  # on the title clock, not the source's


@pytest.mark.slow
def test_keyframe_size_is_the_jpeg_written(media_dir, tmp_path):
    """A stream that changes resolution (as broadcast captures do): each keyframe records its own size."""
    from prism.runner import Runner
    from prism.synth import build_title, ffmpeg

    parts = []
    for i, (shot, (w, h)) in enumerate([(Shot("orange", 2.0), (160, 90)), (Shot("blue", 2.0), (240, 136))]):
        mp4 = media_dir / f"res-part{i}.mp4"
        build_title(Title([shot], width=w, height=h, audio=False), mp4)
        ts = media_dir / f"res-part{i}.ts"
        ffmpeg("-i", str(mp4), "-c", "copy", "-output_ts_offset", str(2.0 * i), str(ts))
        parts.append(ts.read_bytes())
    joined = media_dir / "resolution-change.ts"
    joined.write_bytes(b"".join(parts))
    [outcome] = Runner(tmp_path).run([joined], ["shots", "keyframes"])
    assert outcome.status == "succeeded", outcome
    kf = pq.read_table(tmp_path / "titles" / joined.stem / "keyframes.parquet").to_pandas()
    sizes = set()
    for _, row in kf.iterrows():
        with Image.open(tmp_path / "titles" / joined.stem / row.path) as image:
            assert image.size == (row.width, row.height)
            sizes.add(image.size)
    assert sizes == {(160, 90), (240, 136)}


@pytest.mark.slow
def test_spliced_mpegts_keyframes_and_times(make_video, media_dir, tmp_path):
    """Two programmes cut together as MPEG-TS: timestamps restart at the splice, so a timestamp
    names two frames. Times stay monotonic on the title clock and each JPEG is still its frame."""
    from prism.runner import Runner
    from prism.synth import ffmpeg

    parts = []
    for name, title in [
        ("splice-a", Title([Shot("testsrc2", 2.0), Shot("orange", 2.0)], width=160, height=90)),
        ("splice-b", Title([Shot("mandelbrot", 2.0), Shot("blue", 2.0)], width=160, height=90)),
    ]:
        mp4, _ = make_video(f"{name}.mp4", title)
        ts = media_dir / f"{name}.ts"
        ffmpeg("-i", str(mp4), "-map", "0", "-c", "copy", str(ts))
        parts.append(ts.read_bytes())
    spliced = media_dir / "spliced.ts"
    spliced.write_bytes(b"".join(parts))
    [outcome] = Runner(tmp_path).run([spliced], ["shots", "keyframes"])
    assert outcome.status == "succeeded", outcome
    tdir = tmp_path / "titles" / spliced.stem
    shots = pq.read_table(tdir / "shots.parquet").to_pandas()
    assert len(shots) == 4 and shots.end_s.iloc[-1] == pytest.approx(8.0, abs=1e-3)
    assert (np.diff(shots.start_s) > 0).all()
    metrics = json.loads((tdir / "manifest.json").read_text())["stages"]["shots"]["metrics"]
    assert metrics["truncated"] is False  # ffprobe's duration estimate for a splice is no claim to hold it to
    kf = _assert_jpegs_show_their_frames(tdir, spliced)
    assert set(kf.shot_index) == {0, 1, 2, 3}
