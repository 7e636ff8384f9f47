"""The installed ``prism`` console script, run as a user runs it: a subprocess, its stdout/stderr and exit code.

tests/test_cli.py drives the same commands through typer's CliRunner, in process; these catch what that cannot
see: a broken entry point in pyproject.toml, an import that fails outside the test process, exit codes as the
shell sees them, output written to the real stdout and stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from prism.synth import Shot, Title

ROOT = Path(__file__).resolve().parents[1]


def _script() -> str:
    """``prism`` beside the interpreter running the tests (the venv's bin/), as `pip install -e .` put it."""
    found = shutil.which("prism", path=str(Path(sys.executable).parent))  # not resolved: the venv's bin, not /usr
    if found is None:
        pytest.fail(f"no `prism` console script next to {sys.executable}: run scripts/setup.sh")
    return found


def prism(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}  # tables on one line each, no colour codes
    return subprocess.run([_script(), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def script_run(make_video, tmp_path_factory):
    """One title through shots and cues by the script; the other commands read what it wrote."""
    path, _ = make_video("script.mp4", Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], width=160, height=90))
    out = tmp_path_factory.mktemp("script-run")
    proc = prism("run", str(path), "--out", str(out), "--stages", "shots,cues")
    return path, out, proc


def test_version_is_the_packages():
    proc = prism("version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_run_succeeds_with_exit_0_and_writes_the_title(script_run):
    path, out, proc = script_run
    assert proc.returncode == 0, proc.stderr
    assert "2 shots (1 cuts, 0 gradual)" in proc.stdout and "1/1 titles succeeded" in proc.stdout
    manifest = json.loads((out / "titles" / "script" / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["stages"].items()} == {"shots": "succeeded", "cues": "succeeded"}
    again = prism("run", str(path), "--out", str(out), "--stages", "shots")
    assert again.returncode == 0 and "skipped (up to date)" in again.stdout


def test_a_failed_title_exits_1_and_names_the_file(script_run, tmp_path):
    path, _, _ = script_run
    missing = tmp_path / "nope.mp4"
    proc = prism("run", str(path), str(missing), "--out", str(tmp_path / "out"), "--stages", "cues")
    assert proc.returncode == 1
    assert f"FAILED {missing}: file not found" in proc.stderr  # errors go to stderr, the summary to stdout
    assert "1/2 titles succeeded" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "x.mp4", "--stages", "nonsense"], "unknown stage"),
        (["run", "x.mp4", "--param", "shots.threshold=7"], "threshold"),
        (["run", "x.mp4", "--param", "no-dot"], "STAGE.NAME=VALUE"),
        (["status"], "no catalog at"),
        (["run"], "Missing argument"),  # click's own usage error
    ],
)
def test_usage_errors_exit_2(args, message, tmp_path):
    proc = prism(*args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr


def test_status_lists_titles_and_stages(script_run):
    _, out, _ = script_run
    listing = prism("status", "--out", str(out), "--json")
    assert listing.returncode == 0, listing.stderr
    [title] = json.loads(listing.stdout)
    assert (title["title_id"], title["status"]) == ("script", "succeeded")
    stages = json.loads(prism("status", "script", "--out", str(out), "--json").stdout)
    assert sorted((s["stage"], s["status"]) for s in stages) == [("cues", "succeeded"), ("shots", "succeeded")]
    table = prism("status", "--out", str(out))
    assert table.returncode == 0 and "script" in table.stdout and "succeeded" in table.stdout
    unknown = prism("status", "unknown", "--out", str(out))
    assert unknown.returncode == 1 and "'unknown' is not in" in unknown.stderr


def test_show_prints_the_titles_tables(script_run):
    _, out, _ = script_run
    proc = prism("show", "script", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "script · shots.parquet (2 rows)" in proc.stdout and "cues.parquet" in proc.stdout
    assert "keyframes.parquet" not in proc.stdout  # not run: no table
    missing = prism("show", "absent", "--out", str(out))
    assert missing.returncode == 1 and "no manifest" in missing.stderr


def test_report_writes_html_and_exits_1_for_an_unknown_title(script_run, tmp_path):
    _, out, _ = script_run
    target = tmp_path / "script.html"
    proc = prism("report", "script", "--out", str(out), "--output", str(target))
    assert proc.returncode == 0, proc.stderr
    assert f"report: {target}" in proc.stdout
    assert target.read_text().startswith("<!DOCTYPE html>")
    missing = prism("report", "absent", "--out", str(out))
    assert missing.returncode == 1 and "no manifest" in missing.stderr
