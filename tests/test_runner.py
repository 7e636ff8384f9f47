"""Runner: manifest contract, catalog, skip/force, stage extension, and every bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import jsonschema
import pyarrow as pa
import pytest

from prism.artifacts import read_manifest, validate_manifest, write_parquet
from prism.catalog import SQLiteCatalog
from prism.errors import ConfigError, MediaError
from prism.runner import Runner
from prism.stages import base
from prism.stages.base import ModelInfo, Stage, StageResult, register, resolve_order
from prism.synth import Shot, Title, ffmpeg

VISUAL = ["shots", "keyframes", "cues"]


def test_manifest_is_valid_and_complete(sample_run):
    out, _, outcome = sample_run
    manifest = read_manifest(outcome.title_dir)
    validate_manifest(manifest)
    assert manifest["title_id"] == "sample"
    assert len(manifest["source"]["sha256"]) == 64 and manifest["source"]["bytes"] > 0
    assert manifest["source"]["probe"]["video"]["fps"] == 25.0
    for name in VISUAL:
        entry = manifest["stages"][name]
        assert entry["status"] == "succeeded" and entry["reason"] is None
        assert entry["model"]["name"] and entry["model"]["version"] and entry["params_hash"]
        assert entry["duration_s"] >= 0 and entry["outputs"]
        for rel in entry["outputs"]:
            assert (outcome.title_dir / rel).is_file()
    assert not list(outcome.title_dir.rglob(".*.tmp-*")) and not (outcome.title_dir / ".staging").exists()
    assert not (out / ".work").exists() or not any((out / ".work").iterdir())


def test_schema_rejects_broken_manifests(sample_run):
    manifest = read_manifest(sample_run[2].title_dir)
    broken = json.loads(json.dumps(manifest))
    broken["stages"]["shots"]["status"] = "done"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(broken)
    failed_without_reason = json.loads(json.dumps(manifest))
    failed_without_reason["stages"]["cues"].update(status="failed", reason=None, outputs=[])
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(failed_without_reason)


def test_catalog_records_titles_and_stages(sample_run):
    out, _, _ = sample_run
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    assert catalog.get_title("sample").status == "succeeded"
    stages = {s.stage: s for s in catalog.list_stages("sample")}
    assert set(stages) == set(VISUAL)
    assert stages["shots"].model_name == "transnetv2" and stages["shots"].outputs == [
        "shots.parquet",
        "shot_scores.parquet",
    ]


@pytest.mark.slow
def test_rerun_skips_and_force_reruns(make_video, tmp_path):
    path, _ = make_video("rerun.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    [first] = Runner(tmp_path).run([path], VISUAL)
    assert [s.status for s in first.stages] == ["succeeded"] * 3
    before = read_manifest(first.title_dir)
    [second] = Runner(tmp_path).run([path], VISUAL)
    assert [(s.status, s.reused) for s in second.stages] == [("skipped", True)] * 3
    assert read_manifest(first.title_dir)["stages"] == before["stages"]  # untouched
    # a changed parameter reruns that stage and the ones that depend on it, nothing else
    [third] = Runner(tmp_path, params={"shots": {"threshold": 0.6}}).run([path], VISUAL)
    assert {s.stage: s.reused for s in third.stages} == {"shots": False, "keyframes": False, "cues": True}
    [forced] = Runner(tmp_path, force=True).run([path], ["cues"])
    assert [(s.stage, s.status, s.reused) for s in forced.stages] == [("cues", "succeeded", False)]
    # a deleted output is noticed: the stage runs again
    (first.title_dir / "cues.parquet").unlink()
    [again] = Runner(tmp_path).run([path], ["cues"])
    assert again.stages[0].status == "succeeded" and not again.stages[0].reused


def test_requested_stage_pulls_its_dependencies():
    assert resolve_order(["keyframes"]) == ["shots", "keyframes"]
    with pytest.raises(ConfigError, match="unknown stage"):
        resolve_order(["shots", "nope"])


@dataclass(frozen=True)
class _LumaParams:
    scale: float = 1.0

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError("scale must be > 0")


@pytest.fixture
def extra_stages(monkeypatch):
    """Register test-only stages without touching the runner; removed afterwards."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register
    class ShotLuma(Stage):
        name = "shot_luma"
        requires = ("shots",)
        Params = _LumaParams

        def model(self):
            return ModelInfo("mean-luma", "1")

        def run(self, ctx):
            shots = ctx.read_table("shots.parquet").to_pydict()
            vp = ctx.visual()
            values = [
                float(vp.luma_mean[a:b].mean()) * self.params.scale
                for a, b in zip(shots["start_frame"], shots["end_frame"])
            ]
            write_parquet(
                ctx.staging / "shot_luma.parquet", pa.table({"shot_index": shots["shot_index"], "luma": values})
            )
            return StageResult(outputs=["shot_luma.parquet"], summary=f"{len(values)} shots")

    @register
    class Broken(Stage):
        name = "broken"

        def model(self):
            return ModelInfo("broken", "1")

        def run(self, ctx):
            raise RuntimeError("boom")

    return ShotLuma


def test_new_stage_needs_no_runner_change(extra_stages, make_video, tmp_path):
    path, _ = make_video("rerun.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    [outcome] = Runner(tmp_path).run([path], ["shot_luma"])
    assert [s.stage for s in outcome.stages] == ["shots", "shot_luma"]
    assert outcome.status == "succeeded"
    assert (outcome.title_dir / "shot_luma.parquet").exists()
    with pytest.raises(ConfigError, match="scale must be > 0"):
        Runner(tmp_path, params={"shot_luma": {"scale": -1}}).run([path], ["shot_luma"])


def test_a_crashing_stage_fails_alone(extra_stages, make_video, tmp_path, caplog):
    path, _ = make_video("rerun.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    [outcome] = Runner(tmp_path).run([path], ["broken", "cues"])
    status = {s.stage: s for s in outcome.stages}
    assert status["broken"].status == "failed" and "RuntimeError: boom" in status["broken"].reason
    assert str(path) in status["broken"].reason
    assert status["cues"].status == "succeeded"
    assert outcome.status == "failed"
    validate_manifest(read_manifest(outcome.title_dir))
    caplog.clear()  # the crash is logged with its traceback on purpose


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, make_video):
    d = tmp_path_factory.mktemp("bad")
    good, _ = make_video("good.mp4", Title([Shot("testsrc2", 1.0), Shot("mandelbrot", 1.0)], width=160, height=90))
    files = {name: d / f"{name}.mp4" for name in ("missing", "empty", "text", "truncated", "truncated_faststart")}
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a video\n" * 100)
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    ffmpeg("-i", str(good), "-c", "copy", "-movflags", "+faststart", str(d / "faststart.mp4"))
    fs = (d / "faststart.mp4").read_bytes()
    files["truncated_faststart"].write_bytes(fs[: len(fs) * 2 // 3])
    files["no_audio"], _ = make_video(
        "noaudio.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], audio=False, width=160, height=90)
    )
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=300:duration=2", str(files.setdefault("audio_only", d / "audio_only.m4a"))
    )
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=30:duration=3",
        "-vf", "select='lt(n,30)+gte(n,30)*not(mod(n,3))',setpts='if(lt(N,30),N/30,1+(N-30)/10)/TB'",
        "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(files.setdefault("vfr", d / "vfr.mp4")),
    )  # fmt: skip
    ffmpeg(
        "-i",
        str(good),
        "-c",
        "copy",
        "-metadata:s:v:0",
        "rotate=90",
        str(files.setdefault("rotated", d / "rotated.mp4")),
    )
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x90:rate=25:duration=0.4",
        "-c:v",
        "libx264",
        str(files.setdefault("short", d / "short.mp4")),
    )
    shutil.copy(good, files.setdefault("non_ascii", d / "드라마 01 — 시즌1.mp4"))
    data = bytearray(fs)  # the picture data zeroed: probes as a video, decodes to nothing
    start = data.index(b"mdat") + 4
    data[start:] = bytes(len(data) - start)
    files.setdefault("undecodable", d / "undecodable.mp4").write_bytes(bytes(data))
    return good, files


FAILS = {
    "missing": "file not found",
    "empty": "file is empty",
    "text": "not a media file",
    "truncated": "not a media file",
}
SUCCEEDS = ["no_audio", "audio_only", "vfr", "rotated", "short", "non_ascii"]


@pytest.mark.slow
def test_bad_inputs_in_one_run(bad_inputs, tmp_path):
    good, files = bad_inputs
    order = ["missing", "empty", "text", "truncated", "truncated_faststart", "audio_only", *SUCCEEDS]
    sources = [files[name] for name in order[:3]] + [good] + [files[name] for name in order[3:]]
    outcomes = {o.source: o for o in Runner(tmp_path).run(sources, VISUAL)}
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite")
    assert outcomes[str(good)].status == "succeeded"
    for name, cause in FAILS.items():
        outcome = outcomes[str(files[name])]
        assert outcome.status == "failed", name
        assert str(files[name]) in outcome.reason and cause in outcome.reason, (name, outcome.reason)
        assert "\n" not in outcome.reason
        record = catalog.get_title(outcome.title_id)
        assert record.status == "failed" and cause in record.reason
        manifest = read_manifest(outcome.title_dir)
        validate_manifest(manifest)
        assert manifest["stages"]["shots"]["status"] == manifest["stages"]["cues"]["status"] == "failed"
        keyframes = manifest["stages"]["keyframes"]  # never ran: its input stage failed
        assert keyframes["status"] == "failed" or "upstream" in keyframes["reason"]
    # a file cut short after its index either decodes what is there or fails with a reason
    partial = outcomes[str(files["truncated_faststart"])]
    assert partial.status == "succeeded" or str(files["truncated_faststart"]) in partial.reason
    for name in SUCCEEDS:
        outcome = outcomes[str(files[name])]
        assert outcome.status == "succeeded", (name, outcome.reason)
        validate_manifest(read_manifest(outcome.title_dir))
    assert outcomes[str(files["non_ascii"])].title_id == "드라마-01-시즌1"
    vfr_manifest = read_manifest(outcomes[str(files["vfr"])].title_dir)
    assert vfr_manifest["stages"]["shots"]["metrics"]["variable_frame_rate"] is True
    assert read_manifest(outcomes[str(files["rotated"])].title_dir)["source"]["probe"]["video"]["rotation"] in (90, 270)
    audio_only = read_manifest(outcomes[str(files["audio_only"])].title_dir)["stages"]  # the video stages skipped
    assert audio_only["shots"]["status"] == "skipped" and "no video stream" in audio_only["shots"]["reason"]
    assert audio_only["keyframes"]["status"] == "skipped" and audio_only["cues"]["status"] == "succeeded"


def test_failed_title_does_not_touch_other_titles(bad_inputs, tmp_path):
    good, files = bad_inputs
    Runner(tmp_path).run([good], VISUAL)
    good_dir = tmp_path / "titles" / "good"
    snapshot = {p: p.read_bytes() for p in good_dir.rglob("*") if p.is_file()}
    Runner(tmp_path, force=True).run([files["text"], files["empty"]], VISUAL)
    assert {p: p.read_bytes() for p in good_dir.rglob("*") if p.is_file()} == snapshot


def test_media_error_message_names_file_and_cause(tmp_path):
    err = MediaError(tmp_path / "x.mp4", "file not found")
    assert str(err) == f"{tmp_path / 'x.mp4'}: file not found"


def test_execution_params_do_not_force_a_rerun(make_video, tmp_path):
    path, _ = make_video("rerun.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    Runner(tmp_path).run([path], ["keyframes"])
    [again] = Runner(tmp_path, params={"shots": {"batch_windows": 3}, "keyframes": {"workers": 1}}).run(
        [path], ["keyframes"]
    )
    assert [(s.stage, s.reused) for s in again.stages] == [("shots", True), ("keyframes", True)]
    manifest = read_manifest(again.title_dir)
    assert manifest["stages"]["shots"]["params"]["batch_windows"] == 0  # untouched: the stage did not rerun


def test_blocked_stage_fails_the_title_whatever_its_reason_says(extra_stages, make_video, tmp_path):
    path, _ = make_video("rerun.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    [outcome] = Runner(tmp_path, params={"shots": {"device": "cuda:7"}}).run([path], ["shot_luma"])
    luma = {s.stage: s for s in outcome.stages}["shot_luma"]
    assert luma.status == "blocked" and luma.blocked and outcome.status == "failed"


def test_a_failed_decode_is_not_repeated_by_later_stages(bad_inputs, tmp_path, monkeypatch):
    import prism.media

    _, files = bad_inputs
    calls = []
    real = prism.media.decode_visual

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(prism.media, "decode_visual", counting)
    [outcome] = Runner(tmp_path).run([files["undecodable"]], ["shots", "cues"])
    assert [s.status for s in outcome.stages] == ["failed", "failed"]
    assert outcome.stages[0].reason == outcome.stages[1].reason
    assert len(calls) == 1
