"""The HTML title report: rendered for generated titles in headless Chromium, with and without audio, at 2,000 shots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prism.artifacts import title_dir, write_json
from prism.cli import app
from prism.report import ReportError, load_title, render_report, write_report
from prism.runner import Runner
from prism.synth import Shot, Title, build_title, ffmpeg
from testkit.audio_synth import build_dialogue, espeak_available

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs Debian's `chromium`)"
)
STAGES = ["shots", "keyframes", "cues", "audio"]


def short_title(audio: bool) -> Title:
    """About 10 s at 160x90: cuts, a dissolve, black and a frozen span."""
    return Title(
        shots=[
            Shot("testsrc2", 2.0),
            Shot("mandelbrot", 2.0),
            Shot("life", 2.0, "dissolve", 0.5),
            Shot("smptehdbars", 1.5, freeze_tail_s=1.5),
            Shot("orange", 1.5),
        ],
        black_after={1: 1.0},
        width=160,
        height=90,
        audio=audio,
        silences=[(0.0, 1.0)],
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A short title with two voices (espeak-ng) under its pictures, through every stage but embeddings."""
    root = tmp_path_factory.mktemp("report-full")
    video = root / "demo.mp4"
    if espeak_available():
        build_title(short_title(audio=False), root / "pictures.mp4")
        lines = ((0, "Good morning. The weather today is cold."), (1, "Thank you. I will take the early train."))
        build_dialogue(
            root / "voices.mp4", lines=lines, lead_silence_s=1.0, music_intro_s=1.0, gap_s=0.5, tail_silence_s=0.5
        )
        ffmpeg(
            "-i",
            str(root / "pictures.mp4"),
            "-i",
            str(root / "voices.mp4"),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c",
            "copy",
            str(video),
        )
    else:  # still a real audio track (a tone): loudness and spans, no transcript
        build_title(short_title(audio=True), video)
    out = root / "out"
    [outcome] = Runner(out).run([video], STAGES)
    assert [s.status for s in outcome.stages] == ["succeeded"] * 4, [s.reason for s in outcome.stages]
    return video, out, outcome.title_dir


@pytest.fixture(scope="module")
def silent_run(tmp_path_factory):
    """A title without any audio track: the audio stage is skipped with that reason."""
    root = tmp_path_factory.mktemp("report-noaudio")
    video = root / "mute.mp4"
    build_title(
        Title(
            shots=[Shot("gradients", 2.0), Shot("blue", 2.0), Shot("sierpinski", 2.0)],
            width=160,
            height=90,
            audio=False,
        ),
        video,
    )
    [outcome] = Runner(root / "out").run([video], STAGES)
    audio = next(s for s in outcome.stages if s.stage == "audio")
    assert audio.status == "skipped" and audio.reason.endswith("no audio track")
    return outcome.title_dir


def chromium(
    page: Path, tmp_path: Path, *, fragment: str = "", width: int = 1400, height: int = 1800
) -> tuple[str, str]:
    """Load ``page`` in headless Chromium: a screenshot next to it, and the DOM after its scripts ran."""
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", f"--window-size={width},{height}",
    ]  # fmt: skip
    url = page.resolve().as_uri() + fragment
    logs = []
    for i, action in enumerate((f"--screenshot={page.with_suffix('.png')}", "--dump-dom")):
        profile = tmp_path / f"chromium-profile-{page.stem}-{i}"
        proc = subprocess.run(
            [*common, f"--user-data-dir={profile}", action, url], check=False, capture_output=True, text=True, timeout=120
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        logs.append(proc.stderr)
    return proc.stdout, "\n".join(logs)


def assert_clean_page(dom: str, log: str, shots: int) -> None:
    """The page script finished, recorded no error, the console stayed quiet, and every shot has a card."""
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-report-ready="1"' in root, root
    assert "data-report-errors" not in root, root
    console = [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert len(re.findall(r'class="shot-card[ "]', dom)) == shots
    assert f'data-shot-cards="{shots}"' in root


@needs_chromium
def test_report_renders_in_chromium(full_run, tmp_path):
    _, _, tdir = full_run
    page = write_report(tdir, tmp_path / "demo.html")
    shots = pq.read_table(tdir / "shots.parquet")
    dom, log = chromium(page, tmp_path)
    assert_clean_page(dom, log, shots.num_rows)
    assert page.with_suffix(".png").stat().st_size > 20_000  # a drawn page, not a blank one
    keyframed = len(set(pq.read_table(tdir / "keyframes.parquet")["shot_index"].to_pylist()))
    assert len(re.findall(r'<img src="data:image/', dom)) == keyframed
    assert dom.count('class="cue-row"') == pq.read_table(tdir / "cues.parquet").num_rows
    transcript = json.loads((tdir / "transcript.json").read_text())
    assert len(re.findall(r"<li data-t=", dom)) == len(transcript["segments"])
    if espeak_available():
        assert transcript["segments"] and "morning" in dom.lower()
        assert 'class="loud-line"' in dom and "target -23 LUFS" in dom


@needs_chromium
def test_link_to_a_moment_selects_its_shot(full_run, tmp_path):
    """report.html#t=… runs the same selection as a click: the shot card holding that time is marked."""
    _, _, tdir = full_run
    shots = pq.read_table(tdir / "shots.parquet").to_pylist()
    target = shots[2]
    t = (target["start_s"] + target["end_s"]) / 2
    dom, log = chromium(write_report(tdir, tmp_path / "moment.html"), tmp_path, fragment=f"#t={t:.2f}")
    assert_clean_page(dom, log, len(shots))
    assert f'data-selected-t="{round(t, 2):.3f}"' in dom
    assert re.search(rf'class="shot-card sel" id="shot-{target["shot_index"]}"', dom)
    assert f"shot #{target['shot_index']} " in dom


@needs_chromium
def test_title_without_audio_renders(silent_run, tmp_path):
    page = write_report(silent_run, tmp_path / "mute.html")
    dom, log = chromium(page, tmp_path, height=1000)
    assert_clean_page(dom, log, pq.read_table(silent_run / "shots.parquet").num_rows)
    assert re.search(r"audio skipped: [^<]*no audio track", dom)
    assert 'class="loud-line"' not in dom and "<li data-t=" not in dom


def test_parts_follow_the_manifest(full_run, tmp_path):
    """Only files a succeeded stage lists are read; a stage missing from the manifest is `not run`."""
    _, _, tdir = full_run
    copy = tmp_path / "titles" / "copy"
    shutil.copytree(tdir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["stages"]["audio"]
    manifest["stages"]["cues"].update(status="failed", reason="cues: decode error", outputs=[])
    write_json(copy / "manifest.json", manifest)
    data = load_title(copy)
    assert data.parts["audio"].status == "not run" and not data.transcript and not data.short_term
    assert data.parts["cues"].note == "failed: cues: decode error" and data.cues == []
    html = render_report(copy)
    assert "audio not run" in html and "cues failed: cues: decode error" in html


def test_damaged_artifact_is_a_report_error(full_run, tmp_path):
    _, _, tdir = full_run
    copy = tmp_path / "titles" / "broken"
    shutil.copytree(tdir, copy)
    (copy / "shots.parquet").write_bytes(b"not parquet")
    with pytest.raises(ReportError, match="shots.parquet|Parquet"):
        render_report(copy)
    with pytest.raises(ReportError, match="no manifest"):
        render_report(tmp_path / "titles" / "absent")


def test_cli_report_and_run_report(full_run, tmp_path):
    video, out, tdir = full_run
    cli = CliRunner()
    result = cli.invoke(app, ["report", tdir.name, "--out", str(out), "--output", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    result = cli.invoke(app, ["report", "no-such-title", "--out", str(out)])
    assert result.exit_code == 1 and "no manifest" in result.output
    # every stage is up to date, so this only writes the report, to the default place
    result = cli.invoke(app, ["run", str(video), "--out", str(out), "--stages", ",".join(STAGES), "--report"])
    assert result.exit_code == 0, result.output
    default = out / "reports" / f"{tdir.name}.html"
    assert default.exists() and str(default) in result.output.replace("\n", "")


# ---------------------------------------------------------------- a long title


def fabricate_title(root: Path, shots: int, fps: float = 25.0) -> Path:
    """Artifacts of a ``shots``-shot title written by the contract (no stage run): keyframes are real JPEGs."""
    tdir = title_dir(root, "long")
    (tdir / "keyframes").mkdir(parents=True)
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=480x270:rate=25,noise=alls=12:allf=t+u,hue=H=t*0.7",
        "-frames:v", str(shots), "-q:v", "4", str(tdir / "keyframes" / "%05d.jpg"),
    )  # fmt: skip
    rows, kfs = [], []
    for i in range(shots):
        start, end = i * 3.0 + (i % 5) * 0.2, (i + 1) * 3.0 + ((i + 1) % 5) * 0.2
        rows.append({
            "shot_index": i, "start_frame": round(start * fps), "end_frame": round(end * fps), "start_s": start, "end_s": end,
            "duration_s": end - start, "transition_in": "gradual" if i % 40 == 7 else "cut", "score": None if i == 0 else 0.9,
            "transition_start_frame": round(start * fps) - (12 if i % 40 == 7 else 0), "transition_end_frame": round(start * fps),
        })  # fmt: skip
        if i % 50 != 9:  # some shots have no keyframe (all black)
            path = f"keyframes/{i:05d}_{round(start * fps) + 5:07d}.jpg"
            (tdir / "keyframes" / f"{i + 1:05d}.jpg").rename(tdir / path)
            kfs.append({"shot_index": i, "frame": round(start * fps) + 5, "time_s": start + 0.2, "path": path,
                        "width": 480, "height": 270, "quality": 0.8, "rank": 0})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tdir / "shots.parquet")
    pq.write_table(pa.Table.from_pylist(kfs), tdir / "keyframes.parquet")
    cues = [{"cue_type": ("black", "frozen", "silence")[i % 3], "start_s": i * 29.0, "end_s": i * 29.0 + 1.5,
             "duration_s": 1.5, "value": 1.0, "value_unit": "x"} for i in range(200)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(cues), tdir / "cues.parquet")
    entry = {
        "status": "succeeded",
        "reason": None,
        "model": {"name": "fixture", "version": "1"},
        "duration_s": 1.0,
        "metrics": {},
    }
    write_json(tdir / "manifest.json", {
        "title_id": "long", "source": {"uri": "file:///long.mp4", "probe": {"duration_s": rows[-1]["end_s"], "video": {"fps": fps}}},
        "stages": {
            "shots": {**entry, "outputs": ["shots.parquet"]},
            "keyframes": {**entry, "outputs": ["keyframes.parquet", *(k["path"] for k in kfs)]},
            "cues": {**entry, "outputs": ["cues.parquet"]},
        },
    })  # fmt: skip
    return tdir


@needs_chromium
@pytest.mark.slow
def test_two_thousand_shots_stay_light(tmp_path):
    tdir = fabricate_title(tmp_path, 2000)
    t0 = time.perf_counter()
    page = write_report(tdir, tmp_path / "long.html")
    elapsed = time.perf_counter() - t0
    size = page.stat().st_size
    html = page.read_text()
    svg = html[html.index("<svg") : html.index("</svg>")]
    print(f"2,000-shot report: {size / 1e6:.2f} MB, written in {elapsed:.1f} s, {svg.count('<')} SVG elements")
    assert size < 8_000_000
    assert svg.count("<rect") < 1500  # marks are merged per drawn pixel, not one per shot
    assert html.count('loading="lazy"') == 2000 - 2000 // 50
    dom, log = chromium(page, tmp_path, height=1200)
    assert_clean_page(dom, log, 2000)
    assert "audio not run" in dom


@pytest.mark.slow
def test_truncated_title_is_flagged_and_drawn_at_its_decoded_length(tmp_path):
    """moov first with 10 % of mdat: the report warns, and its timeline spans what was decoded,
    not the 12 s the container declares."""
    from testkit.broken_media import truncate_mp4

    full = tmp_path / "whole.mp4"
    build_title(Title([Shot("testsrc2", 6.0), Shot("mandelbrot", 6.0)], width=160, height=90), full)
    cut = tmp_path / "cut-short.mp4"
    truncate_mp4(full, cut, keep=0.10)
    [outcome] = Runner(tmp_path / "out").run([cut], ["shots", "cues"])
    assert outcome.status == "succeeded", outcome
    tdir = title_dir(tmp_path / "out", "cut-short")
    data = load_title(tdir)
    decoded = json.loads((tdir / "manifest.json").read_text())["stages"]["shots"]["metrics"]["decoded_duration_s"]
    assert data.duration_s == pytest.approx(decoded, abs=1e-3) and decoded < 4.0
    html = render_report(tdir)
    [warning] = re.findall(r'<div class="warn" role="alert" data-warning="truncated">([^<]*)</div>', html)
    assert "12.0 s" in warning and "truncated" in warning
    assert float(re.search(r'"duration":([\d.]+)', html)[1]) == pytest.approx(decoded, abs=1e-3)  # not 12 s
    assert 'data-warning="truncated"' not in render_report(_untruncated(tmp_path))


def _untruncated(tmp_path: Path) -> Path:
    src = tmp_path / "whole.mp4"
    Runner(tmp_path / "out").run([src], ["shots"])
    return title_dir(tmp_path / "out", "whole")
