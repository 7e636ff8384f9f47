"""Reliability, round two (issue 19 items 5-9): awkward file names, audio-only deliverables,
resolution changes, Ctrl-C, and damaged files behind ``show``, ``report`` and ``search``.

Every test builds its own small media; the ones that run real models or a whole pipeline in a
subprocess are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from prism.artifacts import listed_outputs, outputs_intact, read_manifest, title_id_for
from prism.catalog import SQLiteCatalog
from prism.cli import app
from prism.media import ffmpeg_exe
from prism.runner import Runner
from prism.synth import Shot, Title, ffmpeg

cli = CliRunner()
TINY = Title([Shot("testsrc2", 1.0), Shot("mandelbrot", 1.0)], width=160, height=90)
PRISM = [sys.executable, "-m", "prism.cli"]


def _run_cli(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*PRISM, *args], cwd=cwd, capture_output=True, timeout=300, **kwargs)


def _consistent(out: Path, title_id: str) -> dict:
    """Every file the manifest lists is there as recorded, nothing else is, and the catalog agrees."""
    tdir = out / "titles" / title_id
    manifest = read_manifest(tdir)
    assert manifest is not None
    on_disk = {p.relative_to(tdir).as_posix() for p in tdir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == listed_outputs(manifest)
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    for name, entry in manifest["stages"].items():
        if entry["status"] == "succeeded":
            assert outputs_intact(tdir, entry), name
        assert catalog.get_stage(title_id, name).status == entry["status"], name
    catalog.close()
    return manifest


# -- 5. names ----------------------------------------------------------------------------------------


@pytest.mark.slow  # three CLI processes
def test_a_non_utf8_file_name_does_not_crash_the_batch(make_video, tmp_path):
    """``caf\\xe9.mp4`` from a legacy share: processed, printed, stored; the next file still runs."""
    src, _ = make_video("tiny.mp4", TINY)
    legacy = tmp_path / os.fsdecode(b"caf\xe9.mp4")
    legacy.write_bytes(src.read_bytes())
    good = tmp_path / "good.mp4"
    good.write_bytes(src.read_bytes())
    proc = _run_cli(["run", legacy.name, "good.mp4", "--stages", "cues", "--out", "out"], tmp_path)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr and "2/2 titles succeeded" in stdout
    title_id = title_id_for(legacy)
    assert title_id == "caf"
    manifest = _consistent(tmp_path / "out", title_id)
    assert manifest["source"]["uri"].endswith("/caf%E9.mp4")  # the exact bytes, percent-encoded
    status = _run_cli(["status", "--out", "out", "--json"], tmp_path)
    assert status.returncode == 0 and {r["title_id"] for r in json.loads(status.stdout)} == {"caf", "good"}
    # a failure on such a file is one printable line naming it
    broken = tmp_path / os.fsdecode(b"na\xefve.mp4")
    broken.write_bytes(b"not a video at all")
    proc = _run_cli(["run", broken.name, "--stages", "cues", "--out", "out"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
    assert "na\\xefve.mp4" in proc.stderr.decode()
    record = SQLiteCatalog(tmp_path / "out" / "catalog.sqlite").get_title("na-ve")
    assert record.status == "failed" and "na\\xefve.mp4" in record.reason


@pytest.mark.parametrize(
    "stages",
    [["cues"], pytest.param(["shots", "keyframes", "cues"], marks=pytest.mark.slow)],
    ids=["probe-decode-audio", "and-keyframe-seeks"],
)
def test_a_name_starting_with_a_dash_is_a_file_not_an_option(make_video, tmp_path, monkeypatch, stages):
    src, _ = make_video("tiny.mp4", TINY)
    (tmp_path / "-clip.mp4").write_bytes(src.read_bytes())
    monkeypatch.chdir(tmp_path)
    [outcome] = Runner(tmp_path / "out").run([Path("-clip.mp4")], stages)
    assert outcome.status == "succeeded", outcome.reason
    assert outcome.title_id == "clip"
    tdir = tmp_path / "out" / "titles" / "clip"
    assert json.loads((tdir / "manifest.json").read_text())["stages"]["cues"]["metrics"]["silence"] >= 0
    if "keyframes" in stages:
        assert pq.read_table(tdir / "shots.parquet").num_rows == 2
        assert pq.read_table(tdir / "keyframes.parquet").num_rows >= 2


def test_a_legal_255_byte_name_is_processed(make_video, tmp_path):
    src, _ = make_video("tiny.mp4", TINY)
    long_name = "a" * 251 + ".mp4"
    korean = "가" * 83 + ".mp4"  # 253 bytes of UTF-8
    for name in (long_name, korean):
        (tmp_path / name).write_bytes(src.read_bytes())
    out = tmp_path / "out"
    outcomes = Runner(out).run([tmp_path / long_name, tmp_path / korean], ["cues"])
    assert [o.status for o in outcomes] == ["succeeded", "succeeded"], [o.reason for o in outcomes]
    ids = [o.title_id for o in outcomes]
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    # every name made from an id fits: <id>.lock, <id>.html and its temporary .<id>.html.tmp-XXXXXXXX
    assert len(set(ids)) == 2 and all(len(f".{i}.html.tmp-12345678".encode()) <= name_max for i in ids)
    assert ids[1].startswith("가" * 40)  # still readable: a cut of the name plus a digest
    # the report beside it, and its atomic temporary name, fit within NAME_MAX too
    result = cli.invoke(app, ["report", ids[0], "--out", str(out)])
    assert result.exit_code == 0, result.output
    # an id that is short already is left as it always was
    assert title_id_for("Episode 1 (final).mp4") == "Episode-1-final"


# -- 6. audio-only deliverables ------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    """6 s AAC in M4A: tone, 2 s of silence from 2.0 s, tone."""
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
        "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono:d=2",
        "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000:duration=2",
        "-filter_complex", "[0:a][1:a][2:a]concat=n=3:v=0:a=1[a]", "-map", "[a]", "-c:a", "aac", str(path),
    )  # fmt: skip
    return path


def test_audio_only_title_skips_the_video_stages_and_finds_silence(tmp_path):
    src = _audio_only(tmp_path / "radio-edit.m4a")
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(src), "--out", str(out), "--stages", "shots,keyframes,cues"])
    assert result.exit_code == 0, result.output
    manifest = _consistent(out, "radio-edit")
    stages = manifest["stages"]
    assert stages["shots"]["status"] == "skipped" and "no video stream" in stages["shots"]["reason"]
    assert stages["keyframes"]["status"] == "skipped" and "shots skipped" in stages["keyframes"]["reason"]
    assert stages["cues"]["status"] == "succeeded"
    cues = pq.read_table(out / "titles" / "radio-edit" / "cues.parquet").to_pylist()
    assert [c["cue_type"] for c in cues] == ["silence"]
    assert cues[0]["start_s"] == pytest.approx(2.0, abs=0.1) and cues[0]["end_s"] == pytest.approx(4.0, abs=0.1)
    assert stages["cues"]["metrics"]["visual"] == "not analysed: no video stream"
    assert SQLiteCatalog(out / "catalog.sqlite").get_title("radio-edit").status == "succeeded"
    # and again: nothing fails on a rerun either
    result = cli.invoke(app, ["run", str(src), "--out", str(out), "--stages", "shots,keyframes,cues"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_audio_only_title_default_run_exits_0(tmp_path):
    """Every stage, as ``prism run FILE`` runs them: audio analysed, video stages skipped with a reason."""
    src = _audio_only(tmp_path / "podcast.m4a")
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    stages = _consistent(out, "podcast")["stages"]
    assert stages["audio"]["status"] == "succeeded" and stages["cues"]["status"] == "succeeded"
    assert {stages[s]["status"] for s in ("shots", "keyframes", "embeddings")} == {"skipped"}
    assert {"transcript.json", "loudness.json"} <= set(stages["audio"]["outputs"])


# -- 7. resolution changes mid-stream ----------------------------------------------------------------------


def _raw_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Every frame of ``path`` at full size (test-only exact reference)."""
    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]  # fmt: skip
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3).astype(np.float32)


@pytest.mark.slow
def test_keyframes_of_an_sd_break_in_an_hd_capture_have_their_own_size(media_dir, tmp_path):
    """HD, an SD break, HD again, spliced into one MPEG-TS whose timestamps restart at each part
    (so a timestamp names three frames and keyframes are found by decoding from the start): each
    keyframe JPEG is its own frame, at its own segment's size."""
    from prism.synth import build_title

    segments = [("testsrc2", (320, 180)), ("mandelbrot", (160, 120)), ("life", (320, 180))]
    parts, frames = [], []
    for i, (pattern, (w, h)) in enumerate(segments):
        mp4 = media_dir / f"sd-break-part{i}.mp4"
        build_title(Title([Shot(pattern, 2.0)], width=w, height=h, audio=False), mp4)
        ts = media_dir / f"sd-break-part{i}.ts"
        ffmpeg("-i", str(mp4), "-c", "copy", str(ts))
        parts.append(ts.read_bytes())
        frames += list(_raw_frames(mp4, w, h))
    joined = tmp_path / "capture.ts"
    joined.write_bytes(b"".join(parts))
    [outcome] = Runner(tmp_path / "out").run([joined], ["shots", "keyframes"])
    assert outcome.status == "succeeded", outcome.reason
    tdir = tmp_path / "out" / "titles" / "capture"
    rows = pq.read_table(tdir / "keyframes.parquet").to_pylist()
    assert {r["shot_index"] for r in rows} == {0, 1, 2} and len(frames) == 150
    for row in rows:
        expected = segments[row["frame"] // 50][1]
        with Image.open(tdir / row["path"]) as image:
            assert image.size == expected == (row["width"], row["height"]), row
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        errors = [np.abs(pixels - f).mean() if f.shape == pixels.shape else np.inf for f in frames]
        assert errors[row["frame"]] <= min(errors) + 1e-3, (row, errors[row["frame"]], min(errors))


# -- 8. Ctrl-C -----------------------------------------------------------------------------------------------


def _interrupt_when_running(proc: subprocess.Popen, tdir: Path, timeout: float = 300) -> float:
    """SIGINT ``proc`` once a stage of the title has finished and another is running; the time sent."""
    deadline = time.monotonic() + timeout
    while not ((tdir / "manifest.json").exists() and any((tdir / ".staging").glob("*-*"))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no stage ever finished while another ran"
        time.sleep(0.05)
    time.sleep(0.5)  # inside it (a model loaded, a decode under way)
    proc.send_signal(signal.SIGINT)
    return time.monotonic()


@pytest.mark.slow
@pytest.mark.parametrize("overlap", ["1", "0"])
def test_ctrl_c_stops_promptly_says_so_and_leaves_the_title_consistent(sample_video, tmp_path, overlap):
    """The sample title with every stage; Ctrl-C while a stage runs (with overlap: the audio stage
    beside the visual ones). Before: with overlap the signal was answered after the whole title."""
    path, _ = sample_video
    out = tmp_path / "out"
    env = {**os.environ, "PRISM_OVERLAP_STAGES": overlap}
    proc = subprocess.Popen([*PRISM, "run", str(path), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        sent = _interrupt_when_running(proc, out / "titles" / "sample")
        stdout, stderr = proc.communicate(timeout=120)  # before: not answered in 120 s with overlap
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    answered = time.monotonic() - sent
    assert proc.returncode == 130, (stdout + stderr).decode()
    assert answered < 15.0, answered
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    manifest = _consistent(out, "sample")
    assert manifest["stages"] and all(e["status"] == "succeeded" for e in manifest["stages"].values())
    assert len(manifest["stages"]) < 5  # it did stop
    assert not (out / "titles" / "sample" / ".staging").exists()
    assert not (out / ".work").exists() or not any((out / ".work").iterdir())


def test_empty_stages_is_refused(make_video, tmp_path):
    src, _ = make_video("tiny.mp4", TINY)
    for value in ("", " , "):
        result = cli.invoke(app, ["run", str(src), "--out", str(tmp_path / "out"), "--stages", value])
        assert result.exit_code == 2, result.output
        assert "names no stage" in result.output
    assert not (tmp_path / "out" / "titles").exists()


def test_ctrl_c_stops_the_stages_of_both_groups_at_once(make_video, tmp_path, monkeypatch):
    """SIGINT while the visual group runs a long stage beside the audio one: both stop at their next
    progress report, nothing of theirs is recorded, and the run stops before the next title."""
    from prism.stages.audio import AudioStage
    from prism.stages.cues import CuesStage

    src, _ = make_video("tiny.mp4", TINY)
    started = []

    def long_stage(self, ctx):  # a long decode or model call, reporting progress as the real ones do
        started.append((ctx.title_id, self.name))
        for i in range(600):
            if self.name == "audio" and i == 10:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C: Python raises it in the main thread
            ctx.progress(i, 600, "working")
            time.sleep(0.05)
        raise AssertionError(f"{self.name} was never stopped")

    monkeypatch.setattr(CuesStage, "run", long_stage)
    monkeypatch.setattr(AudioStage, "run", long_stage)
    runner = Runner(tmp_path / "out", overlap=True)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        runner.run([src, src.with_name("never.mp4")], ["cues", "audio"])
    assert time.monotonic() - t0 < 4.0  # before: 30 s, the whole of the visual stage
    assert sorted(started) == [("tiny", "audio"), ("tiny", "cues")]
    tdir = tmp_path / "out" / "titles" / "tiny"
    assert read_manifest(tdir) is None and not (tdir / ".staging").exists()  # nothing half-recorded
    assert not (tmp_path / "out" / "titles" / "never").exists()


# -- 9. damaged files behind show, report and search ------------------------------------------------------


@pytest.fixture(scope="module")
def processed_once(make_video, tmp_path_factory):
    src, _ = make_video("tiny.mp4", TINY)
    out = tmp_path_factory.mktemp("processed") / "out"
    [outcome] = Runner(out).run([src], ["cues"])
    assert outcome.status == "succeeded"
    return out


@pytest.fixture
def processed(processed_once, tmp_path):
    """A processed title of its own (a copy), to damage."""
    out = tmp_path / "out"
    shutil.copytree(processed_once, out)
    return out, out / "titles" / "tiny"


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: (t / "manifest.json").write_text('{"stages": {"shots": {"stat'),  # cut short
        lambda t: (t / "manifest.json").write_text('{"stages": ["shots"]}'),  # not the shape
        lambda t: (t / "manifest.json").write_bytes(b"\xff\xfe garbage"),
    ],
    ids=["truncated", "wrong-shape", "not-utf8"],
)
def test_show_and_report_on_a_damaged_manifest_say_so_in_one_line(processed, damage):
    out, tdir = processed
    damage(tdir)
    for command in (["show", "tiny"], ["report", "tiny"]):
        result = cli.invoke(app, [*command, "--out", str(out)])
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert "manifest" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("cut", [0.5, 0.0], ids=["cut-short", "emptied"])
def test_show_and_report_on_a_damaged_artifact_say_so_in_one_line(processed, cut):
    out, tdir = processed
    data = (tdir / "cues.parquet").read_bytes()
    (tdir / "cues.parquet").write_bytes(data[: int(len(data) * cut)])
    for command in (["show", "tiny"], ["report", "tiny"]):
        result = cli.invoke(app, [*command, "--out", str(out)])
        assert result.exit_code == 1, (command, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert "cues.parquet" in result.output and "Traceback" not in result.output
