"""The benchmark code runs end to end on tiny inputs (numbers are not checked: benchmarks are not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.shots import score
from prism.synth import Shot, Title, Truth

ROOT = Path(__file__).resolve().parents[1]


def test_trecvid_style_matching_is_one_to_one():
    truth = Truth(cuts=[50, 100], gradual=[(150, 175)], black=[], frozen=[], frame_count=300, fps=25.0)
    s = score(truth, [49, 51, 101, 160, 250])
    assert (s.tp, s.fp, s.fn) == (3, 2, 0)  # 51 is a second match for the cut at 50: a false positive
    assert s.as_dict() == {  # p = 3/5, r = 3/3, f1 = 2pr/(p+r) = 0.75
        "precision": 0.6, "recall": 1.0, "f1": 0.75, "recall_cut": 1.0, "recall_gradual": 1.0,
        "false_positives": 2, "misses": 0,
    }  # fmt: skip
    assert score(truth, []).as_dict()["recall"] == 0.0
    assert score(truth, [53]).as_dict() == {  # 53 is too far from the cut at 50: nothing matched
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "recall_cut": 0.0, "recall_gradual": 0.0,
        "false_positives": 1, "misses": 3,
    }  # fmt: skip


@pytest.mark.slow
def test_benchmark_command_runs_on_tiny_inputs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path), "--doc", str(tmp_path / "doc.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["shots_quality"]["overall"]) == {"prism", "pyscenedetect_adaptive", "pyscenedetect_content"}
    assert results["end_to_end"]["status"] == "succeeded"
    assert results["shots_speed"]["decode_only_fps"] > 0
    doc = (tmp_path / "doc.md").read_text()
    assert "Shot detection quality" in doc and "End to end" in doc


def test_device_flag_alone_asks_for_the_accelerator():
    import torch

    from benchmarks.__main__ import parse_args

    assert parse_args([]).device == "auto"
    assert parse_args(["--device", "cpu"]).device == "cpu"
    assert parse_args(["--device", "--quick"]).device == "cuda" and parse_args(["--device", "--quick"]).quick
    if torch.cuda.is_available():
        return
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--device", "--quick", "--out", "/nonexistent/never-written"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "sees no CUDA device" in proc.stderr  # at once, before generating inputs


def test_audio_benchmark_skips_with_a_reason_without_espeak(tmp_path, monkeypatch):
    from benchmarks import audio

    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng anywhere, as in the GPU worker image
    result = audio.run(tmp_path / "audio", minutes=0.1)
    assert result == {"skipped": "espeak-ng is not on PATH, so the spoken test input cannot be generated"}


@pytest.mark.slow
def test_shots_speed_excludes_the_model_load(make_video, tmp_path, monkeypatch):
    import time

    from benchmarks.shots import prism_boundaries
    from prism.stages import shots as shots_stage

    path, truth = make_video(
        "bench-speed.mp4", Title([Shot("testsrc2", 1.0), Shot("orange", 1.0)], width=96, height=54)
    )
    real, loads = shots_stage.load_model, []

    def cold_load(device: str):  # a first load as slow as a real cold start on a busy disk
        if not loads:
            time.sleep(20.0)
        loads.append(device)
        return real(device)

    monkeypatch.setattr(shots_stage, "load_model", cold_load)
    found, elapsed = prism_boundaries(path, tmp_path, "cpu")
    assert found == truth.cuts and len(loads) >= 2
    assert elapsed < 20.0  # the stage's time is decode + inference; the load happened before it


def test_embeddings_benchmark_times_the_stage_code_path(tmp_path, monkeypatch):
    import os

    from benchmarks.embeddings import bench_embed
    from prism.stages.embeddings import MODEL_ENV

    monkeypatch.delenv(MODEL_ENV, raising=False)
    result = bench_embed(tmp_path, keyframes=4, preset="tiny")
    # the stage's defaults on this machine, not the benchmark's own choices
    assert (result["device"], result["dtype"], result["batch_size"]) == ("cpu", "float32", 16)
    assert result["workers"] == os.cpu_count() and result["preprocess"] == "torch on the device"
    assert result["keyframes"] == 4 and result["dim"] == 16
    assert (tmp_path / "random-clip-tiny" / "config.json").exists()  # loaded from a model directory, like the stage


def test_real_media_registry_finds_its_modules_and_rewrites_only_their_sections():
    """Issue 20.6: `python -m benchmarks.real` runs every benchmarks/real_*.py and replaces its section in place."""
    from benchmarks.real import modules, replace_section

    assert "real_audio" in modules() and all(m.startswith("real_") for m in modules())
    doc = "# Benchmarks\n\n### Audio\n\nold audio\n\n### Real recordings: x\n\nold real\n\n## Notes\n\nkept\n"
    new = replace_section(doc, "### Real recordings: x\n\nnew real\n")
    assert new == "# Benchmarks\n\n### Audio\n\nold audio\n\n### Real recordings: x\n\nnew real\n\n## Notes\n\nkept\n"
    appended = replace_section(new, "### Real footage: shots\n\nnumbers\n")
    assert appended.startswith(new.rstrip("\n")) and appended.endswith("\n\n### Real footage: shots\n\nnumbers\n")
    with pytest.raises(ValueError, match="heading"):
        replace_section(doc, "no heading\n")


def test_every_real_measurement_replaces_its_own_section_of_the_doc():
    """Each benchmarks/real_*.py heads its section with a fixed '### ' heading that docs/benchmarks.md carries,
    so `python -m benchmarks.real` rewrites it in place (a heading that changes per run would append copies)."""
    import re

    from benchmarks.real import DOC, modules

    doc = DOC.read_text(encoding="utf-8").splitlines()
    for name in modules():
        source = (DOC.parents[1] / "benchmarks" / f"{name}.py").read_text(encoding="utf-8")
        headings = re.findall(r'"(#{2,3} [^"]+)"', source)
        assert headings and headings[0].startswith("### "), (name, headings[:1])
        assert headings[0] in doc, f"{name}: {headings[0]!r} is not a heading of {DOC.name}"
