"""The benchmark code runs end to end on tiny inputs (numbers are not checked: benchmarks are not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.shots import Score, score
from prism.synth import Truth

ROOT = Path(__file__).resolve().parents[1]


def test_trecvid_style_matching_is_one_to_one():
    truth = Truth(cuts=[50, 100], gradual=[(150, 175)], black=[], frozen=[], frame_count=300, fps=25.0)
    s = score(truth, [49, 51, 101, 160, 250])
    assert (s.tp, s.fp, s.fn) == (3, 2, 0)  # 51 is a second match for the cut at 50: a false positive
    assert score(truth, []).as_dict()["recall"] == 0.0
    assert score(truth, [53]).as_dict() == {**Score(fp=1, fn=3, n_cut=2, n_gradual=1).as_dict()}


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
