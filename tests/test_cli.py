"""The `prism` command in process (CliRunner): exit codes, summary, status, sample.

The installed script, run as a subprocess: test_console_script.py.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from prism.cli import app
from prism.synth import Shot, Title

runner = CliRunner()


def test_run_prints_summary_and_exit_codes(make_video, tmp_path):
    path, _ = make_video("cli.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    out = tmp_path / "out"
    ok = runner.invoke(app, ["run", str(path), "--out", str(out), "--stages", "shots,cues"])
    assert ok.exit_code == 0, ok.output
    assert "2 shots (1 cuts, 0 gradual)" in ok.output and "1/1 titles succeeded" in ok.output
    again = runner.invoke(app, ["run", str(path), "--out", str(out), "--stages", "shots"])
    assert again.exit_code == 0 and "skipped (up to date)" in again.output
    mixed = runner.invoke(app, ["run", str(path), str(tmp_path / "nope.mp4"), "--out", str(out), "--stages", "cues"])
    assert mixed.exit_code == 1
    assert f"FAILED {tmp_path / 'nope.mp4'}: file not found" in mixed.output and "1/2 titles succeeded" in mixed.output


def test_usage_errors_exit_2(tmp_path):
    bad_stage = runner.invoke(app, ["run", "x.mp4", "--out", str(tmp_path), "--stages", "nonsense"])
    assert bad_stage.exit_code == 2 and "unknown stage" in bad_stage.output
    bad_param = runner.invoke(app, ["run", "x.mp4", "--out", str(tmp_path), "--param", "shots.threshold=7"])
    assert bad_param.exit_code == 2 and "threshold" in bad_param.output
    assert runner.invoke(app, ["status", "--out", str(tmp_path / "empty")]).exit_code == 2


def test_status_reads_the_catalog(make_video, tmp_path):
    path, _ = make_video("cli.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    out = tmp_path / "out"
    runner.invoke(app, ["run", str(path), "--out", str(out), "--stages", "cues"])
    listing = runner.invoke(app, ["status", "--out", str(out), "--json"])
    assert listing.exit_code == 0
    [title] = json.loads(listing.output)
    assert title["title_id"] == "cli" and title["status"] == "succeeded"
    stages = json.loads(runner.invoke(app, ["status", "cli", "--out", str(out), "--json"]).output)
    assert [(s["stage"], s["status"]) for s in stages] == [("cues", "succeeded")]
    assert runner.invoke(app, ["status", "unknown", "--out", str(out)]).exit_code == 1


def test_sample_writes_a_video_with_known_cuts(tmp_path):
    target = tmp_path / "demo.mp4"
    result = runner.invoke(app, ["sample", str(target), "--width", "160", "--height", "90"])
    assert result.exit_code == 0 and target.stat().st_size > 0
    assert "hard cuts at frames [75, 187, 287, 362, 387, 499]" in result.output
