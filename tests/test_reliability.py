"""Reliability: a failure is contained to its title, nothing stale is left marked succeeded.

Most tests use two cheap test-only stages (``parts`` -> ``tally``) so the runner's own logic
(locks, journaled publish, up-to-date checks, downstream consistency) is exercised in
milliseconds; the issue's scenarios with the real stages use tiny generated videos.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prism.artifacts import listed_outputs, outputs_intact, read_manifest, validate_manifest
from prism.catalog import SQLiteCatalog
from prism.cli import app
from prism.errors import StorageError
from prism.runner import Runner, fingerprint
from prism.stages import base
from prism.synth import Shot, Title, ffmpeg

cli = CliRunner()
TINY = Title([Shot("testsrc2", 1.0), Shot("mandelbrot", 1.0)], width=160, height=90)
OTHER = Title([Shot("life", 1.0), Shot("testsrc2", 1.0)], width=160, height=90, tone_hz=660.0)


_HERE = Path(__file__).parent


def assert_consistent(out: Path, title_id: str) -> dict:
    """Manifest, files and catalog agree, and every succeeded stage was made from its inputs as they are."""
    tdir = out / "titles" / title_id
    manifest = read_manifest(tdir)
    validate_manifest(manifest)
    on_disk = {p.relative_to(tdir).as_posix() for p in tdir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == listed_outputs(manifest), "files on disk differ from the files the manifest lists"
    assert not [p for p in tdir.rglob("*") if p.is_dir() and not any(p.iterdir())], "empty folders left"
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    known = base.registry()
    for name, entry in manifest["stages"].items():
        record = catalog.get_stage(title_id, name)
        assert (record.status, record.fingerprint, record.outputs) == (
            entry["status"], entry["fingerprint"], entry["outputs"]
        ), name  # fmt: skip
        if entry["status"] != "succeeded":
            continue
        assert outputs_intact(tdir, entry), f"{name}: an output differs from what the manifest recorded"
        assert set(entry.get("files", entry["outputs"])) == set(entry["outputs"]), name
        stage = known[name](entry["params"])
        upstream = [manifest["stages"][d] for d in stage.requires]
        assert all(u["status"] == "succeeded" for u in upstream), f"{name} succeeded on a failed input"
        expected = fingerprint(manifest["source"]["sha256"], stage, [u["fingerprint"] for u in upstream])
        assert entry["fingerprint"] == expected, f"{name} was made from other inputs than the ones there now"
    assert not (out / ".work" / title_id).exists()
    return manifest


def _parts_label(out: Path, title_id: str) -> tuple[str, int]:
    tdir = out / "titles" / title_id
    index = pq.read_table(tdir / "parts.parquet").to_pydict()
    tally = pq.read_table(tdir / "tally.parquet").to_pylist()[0]
    assert tally == {"count": len(index["path"]), "labels": sorted(set(index["label"]))}  # tally matches its input
    return index["label"][0], len(index["path"])


# ------------------------------------------------------------------ 2: title-id collisions


@pytest.mark.parametrize("names", [("a/clip.mp4", "b/clip.mp4"), ("a b.mp4", "a-b.webm")])
def test_two_sources_with_one_title_id_never_share_a_folder(names, make_video, tmp_path, cheap_stages):
    one, _ = make_video("tiny.mp4", TINY)
    two, _ = make_video("other.mp4", OTHER)
    first, second = (tmp_path / "in" / n for n in names)
    for path in (first, second):
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(one, first)
    if second.suffix == ".webm":
        ffmpeg("-i", str(two), "-c:v", "libvpx-vp9", "-b:v", "200k", "-c:a", "libopus", str(second))
    else:
        shutil.copy(two, second)
    out = tmp_path / "out"
    a, b = Runner(out).run([first, second], cheap_stages)
    assert a.title_id == b.title_id
    assert a.status == "succeeded" and b.status == "failed"
    assert f"title id {a.title_id!r}" in b.reason and str(first) in b.reason and "\n" not in b.reason
    manifest = assert_consistent(out, a.title_id)
    assert manifest["source"]["uri"] == first.resolve().as_uri()
    snapshot = {p: p.read_bytes() for p in (out / "titles").rglob("*") if p.is_file()}
    # a later run of the other file alone (even --force) fails too and touches nothing of the title
    [again] = Runner(out, force=True).run([second], cheap_stages)
    assert again.status == "failed" and "already holds another source" in again.reason and str(first) in again.reason
    assert {p: p.read_bytes() for p in (out / "titles").rglob("*") if p.is_file()} == snapshot
    record = SQLiteCatalog(out / "catalog.sqlite").get_title(a.title_id)
    assert record.status == "succeeded" and record.source_uri == first.resolve().as_uri()


def test_collision_is_caught_from_the_catalog_when_the_manifest_is_gone(make_video, tmp_path, cheap_stages):
    one, _ = make_video("tiny.mp4", TINY)
    two, _ = make_video("other.mp4", OTHER)
    for folder, video in (("a", one), ("b", two)):
        (tmp_path / folder).mkdir()
        shutil.copy(video, tmp_path / folder / "clip.mp4")
    Runner(tmp_path / "out").run([tmp_path / "a" / "clip.mp4"], cheap_stages)
    (tmp_path / "out" / "titles" / "clip" / "manifest.json").unlink()
    [b] = Runner(tmp_path / "out").run([tmp_path / "b" / "clip.mp4"], cheap_stages)
    assert b.status == "failed" and f"already holds another source ({tmp_path / 'a' / 'clip.mp4'}" in b.reason


def test_cli_reports_an_id_collision_and_exits_1(make_video, tmp_path):
    one, _ = make_video("tiny.mp4", TINY)
    two, _ = make_video("other.mp4", OTHER)
    for folder, video in (("a", one), ("b", two)):
        (tmp_path / folder).mkdir()
        shutil.copy(video, tmp_path / folder / "clip.mp4")
    args = ["run", str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4"), "--out", str(tmp_path / "out")]
    result = cli.invoke(app, [*args, "--stages", "cues"])
    assert result.exit_code == 1, result.output
    assert "1/2 titles succeeded" in result.output
    assert (
        f"FAILED {tmp_path / 'b' / 'clip.mp4'}: title id 'clip' is also the id of {tmp_path / 'a' / 'clip.mp4'}"
        in result.output
    )


def test_new_content_at_the_same_path_reruns_every_stage_the_title_has(make_video, tmp_path, cheap_stages):
    one, _ = make_video("tiny.mp4", TINY)
    two, _ = make_video("other.mp4", OTHER)
    path, out = tmp_path / "episode.mp4", tmp_path / "out"
    shutil.copy(one, path)
    Runner(out).run([path], cheap_stages)
    shutil.copy(two, path)  # the same title re-delivered: a new master at the same path
    [outcome] = Runner(out).run([path], ["parts"])
    assert outcome.status == "succeeded"
    assert [(s.stage, s.reused) for s in outcome.stages] == [("parts", False), ("tally", False)]
    assert assert_consistent(out, "episode")["source"]["sha256"] != ""


# ------------------------------------------------------------------ 3: stale downstream, crash-safe publish


def test_rerunning_an_upstream_stage_brings_its_dependents_up_to_date(make_video, tmp_path, cheap_stages):
    path, _ = make_video("tiny.mp4", TINY)
    Runner(tmp_path).run([path], cheap_stages)
    [outcome] = Runner(tmp_path, params={"parts": {"count": 3, "label": "b"}}).run([path], ["parts"])
    assert [(s.stage, s.status, s.reused) for s in outcome.stages] == [
        ("parts", "succeeded", False), ("tally", "succeeded", False)
    ]  # fmt: skip
    assert_consistent(tmp_path, "tiny")
    assert _parts_label(tmp_path, "tiny") == ("b", 3)
    assert not list((tmp_path / "titles" / "tiny" / "parts").glob("a-*"))  # the old parts are gone
    # unchanged upstream: the dependent joins the run but is reused
    [same] = Runner(tmp_path, params={"parts": {"count": 3, "label": "b"}}).run([path], ["parts"])
    assert [(s.stage, s.reused) for s in same.stages] == [("parts", True), ("tally", True)]


@pytest.mark.slow
def test_new_shots_threshold_reruns_keyframes(make_video, tmp_path):
    path, _ = make_video(
        "dissolve.mp4",
        Title(
            [Shot("testsrc2", 1.2), Shot("mandelbrot", 1.2, "dissolve", 0.6), Shot("life", 1.2)], width=160, height=90
        ),
    )
    Runner(tmp_path).run([path], ["keyframes"])
    [outcome] = Runner(tmp_path, params={"shots": {"threshold": 0.9, "extent_threshold": 0.5}}).run([path], ["shots"])
    assert [(s.stage, s.status, s.reused) for s in outcome.stages] == [
        ("shots", "succeeded", False), ("keyframes", "succeeded", False)
    ]  # fmt: skip
    assert_consistent(tmp_path, "dissolve")
    tdir = tmp_path / "titles" / "dissolve"
    shots = {r["shot_index"]: r for r in pq.read_table(tdir / "shots.parquet").to_pylist()}
    for kf in pq.read_table(tdir / "keyframes.parquet").to_pylist():
        shot = shots[kf["shot_index"]]
        assert shot["start_s"] <= kf["time_s"] < shot["end_s"]


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing in the runner catches it."""


def _replace_failing_at(monkeypatch, n: int, exc: BaseException) -> list[int]:
    real, calls = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.slow
def test_a_crash_before_any_rename_is_repaired_by_the_next_run(make_video, tmp_path, cheap_stages):
    path, _ = make_video("tiny.mp4", TINY)
    a_params, b_params = {"parts": {"count": 2, "label": "a"}}, {"parts": {"count": 3, "label": "b"}}
    template = tmp_path / "template"
    Runner(template).run([path], cheap_stages)
    shutil.copytree(template, tmp_path / "count")
    with pytest.MonkeyPatch.context() as mp:
        counting = _replace_failing_at(mp, 0, Killed())
        Runner(tmp_path / "count", params=b_params).run([path], cheap_stages)
    renames = counting[0]
    assert renames >= 10  # journals, staged parquet, published files, manifests
    for n in range(1, renames + 1):
        for kind in (Killed(), OSError(errno.ENOSPC, "No space left on device")):
            out = tmp_path / f"run-{n}-{type(kind).__name__}"
            shutil.copytree(template, out)
            with pytest.MonkeyPatch.context() as mp:
                _replace_failing_at(mp, n, kind)
                if isinstance(kind, Killed):
                    with pytest.raises(Killed):
                        Runner(out, params=b_params).run([path], cheap_stages)
                else:  # a full disk fails the title with a reason; it never escapes as an exception
                    [failed] = Runner(out, params=b_params).run([path], cheap_stages)
                    assert failed.status == "failed" and "No space left on device" in failed.reason, n
                    assert "\n" not in failed.reason
            rerun = b_params if n % 2 else a_params  # the next run may keep the new params or go back
            [outcome] = Runner(out, params=rerun).run([path], cheap_stages)
            assert outcome.status == "succeeded", (n, kind, outcome.reason)
            assert_consistent(out, "tiny")
            assert _parts_label(out, "tiny") == (rerun["parts"]["label"], rerun["parts"]["count"]), (n, kind)


def test_leftovers_of_a_killed_run_are_cleaned(make_video, tmp_path, cheap_stages):
    path, _ = make_video("tiny.mp4", TINY)
    Runner(tmp_path).run([path], cheap_stages)
    tdir = tmp_path / "titles" / "tiny"
    leftovers = [
        tdir / ".manifest.json.tmp-0123abcd",
        tdir / "parts" / ".a-0.txt.tmp-89abcdef",
        tdir / ".staging" / "parts-12345678" / "parts.parquet",
        tmp_path / ".work" / "tiny" / "abcd1234" / "frames.u8",
    ]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half written")
    (tdir / "parts" / "zz-orphan.txt").write_text("published, then killed before the manifest")
    (tdir / ".publishing-parts.json").write_text(json.dumps({"stage": "parts", "outputs": ["parts/zz-orphan.txt"]}))
    other_title = tmp_path / ".work" / "another-title" / "0badc0de" / "frames.u8"  # no run holds its lock
    other_title.parent.mkdir(parents=True)
    other_title.write_bytes(b"scratch")
    [outcome] = Runner(tmp_path).run([path], cheap_stages)
    assert [s.reused for s in outcome.stages] == [True, True]
    assert not (tmp_path / ".work").exists()
    assert not any(p.exists() for p in leftovers) and not (tdir / ".publishing-parts.json").exists()
    assert not (tdir / "parts" / "zz-orphan.txt").exists()
    assert_consistent(tmp_path, "tiny")


def test_a_garbled_manifest_makes_the_title_run_again(make_video, tmp_path, cheap_stages):
    path, _ = make_video("tiny.mp4", TINY)
    Runner(tmp_path).run([path], cheap_stages)
    (tmp_path / "titles" / "tiny" / "manifest.json").write_text('{"stages": ')
    [outcome] = Runner(tmp_path).run([path], cheap_stages)
    assert [(s.status, s.reused) for s in outcome.stages] == [("succeeded", False)] * 2
    assert_consistent(tmp_path, "tiny")


# ------------------------------------------------------------------ 9: up-to-date means intact


@pytest.mark.parametrize("damage", ["garbage", "same_size_garbage", "truncated"])
def test_a_damaged_artifact_is_rebuilt_not_reused(damage, make_video, tmp_path, cheap_stages):
    path, _ = make_video("tiny.mp4", TINY)
    Runner(tmp_path).run([path], cheap_stages)
    target = tmp_path / "titles" / "tiny" / "parts.parquet"
    good = target.read_bytes()
    target.write_bytes(
        {"garbage": b"not parquet", "same_size_garbage": bytes(len(good)), "truncated": good[: len(good) // 2]}[damage]
    )
    [outcome] = Runner(tmp_path).run([path], cheap_stages)
    assert [(s.stage, s.status, s.reused) for s in outcome.stages] == [
        ("parts", "succeeded", False), ("tally", "skipped", True)
    ]  # fmt: skip
    assert target.read_bytes() == good
    assert_consistent(tmp_path, "tiny")


def test_catalog_left_behind_by_a_kill_is_resynced(make_video, tmp_path, cheap_stages):
    path, _ = make_video("tiny.mp4", TINY)
    Runner(tmp_path).run([path], cheap_stages)
    (tmp_path / "catalog.sqlite").unlink()  # also covers a catalog lost or written before the manifest
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'catalog.sqlite'}{suffix}").unlink(missing_ok=True)
    [outcome] = Runner(tmp_path).run([path], cheap_stages)
    assert all(s.reused for s in outcome.stages)
    assert_consistent(tmp_path, "tiny")


# ------------------------------------------------------------------ 9: typed params


@pytest.mark.parametrize(
    "param, message",
    [
        ("shots.threshold=abc", "'threshold' must be a finite number, got 'abc'"),
        ("shots.batch_windows=1.5", "'batch_windows' must be an integer, got 1.5"),
        ("shots.max_cut_frames=true", "'max_cut_frames' must be an integer, got True"),
        ("keyframes.workers=[2]", "'workers' must be an integer, got [2]"),
        ("shots.threshold=NaN", "'threshold' must be a finite number"),
    ],
)
def test_mistyped_params_exit_2_with_the_parameter_named(param, message, tmp_path):
    result = cli.invoke(app, ["run", "x.mp4", "--out", str(tmp_path), "--stages", "shots", "--param", param])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_typed_params_are_coerced_from_text():
    stage = base.registry()["shots"]({"threshold": "0.4", "batch_windows": 2.0, "max_cut_frames": "5"})
    assert (stage.params.threshold, stage.params.batch_windows, stage.params.max_cut_frames) == (0.4, 2, 5)
    assert isinstance(stage.params.batch_windows, int)


# ------------------------------------------------------------------ 6: concurrent runs on one --out


PARALLEL_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from cheap_stages import register_cheap_stages
from prism.runner import Runner
order = register_cheap_stages()
params = {"parts": {"count": 4, "delay_s": 0.02}}
outcomes = Runner(sys.argv[2], force=True, params=params).run(sys.argv[3:], order)
print(json.dumps([[o.title_id, o.status, o.reason] for o in outcomes]))
"""


def test_parallel_forced_runs_on_one_out_end_consistent(make_video, tmp_path, cheap_stages):
    one, _ = make_video("tiny.mp4", TINY)
    videos = []
    for i in range(6):
        videos.append(tmp_path / f"ep{i}.mp4")
        shutil.copy(one, videos[-1])
    out = tmp_path / "out"
    procs = []
    for k in range(4):  # two walk the titles forwards, two backwards: they meet on every title
        order = videos if k % 2 else videos[::-1]
        cmd = [sys.executable, "-c", PARALLEL_RUN, str(_HERE), str(out), *map(str, order)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for rc, stdout, stderr in results:
        assert rc == 0, stderr
        assert "Traceback" not in stderr
        assert [status for _, status, _ in json.loads(stdout)] == ["succeeded"] * 6, stdout
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    for video in videos:
        assert_consistent(out, video.stem)
        assert _parts_label(out, video.stem) == ("a", 4)
        assert catalog.get_title(video.stem).status == "succeeded"
        assert not (out / "titles" / video.stem / ".staging").exists()


# ------------------------------------------------------------------ 7/8: environment failures, unreadable inputs


def test_corrupt_catalog_exits_2_with_one_line(make_video, tmp_path):
    path, _ = make_video("tiny.mp4", TINY)
    tmp_path.joinpath("catalog.sqlite").write_bytes(b"this is not sqlite" * 100)
    for args in (["run", str(path), "--out", str(tmp_path), "--stages", "cues"], ["status", "--out", str(tmp_path)]):
        result = cli.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "catalog.sqlite" in result.output and "not a database" in result.output
        assert "Traceback" not in result.output and not isinstance(result.exception, sqlite3.Error)
    with pytest.raises(StorageError, match="not a database"):
        SQLiteCatalog(tmp_path / "catalog.sqlite")


def test_full_disk_fails_only_the_title_being_written(make_video, tmp_path):
    one, _ = make_video("tiny.mp4", TINY)
    two, _ = make_video("other.mp4", OTHER)
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if "/titles/tiny/" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", replace)
        result = cli.invoke(app, ["run", str(one), str(two), "--out", str(tmp_path), "--stages", "cues"])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "1/2 titles succeeded" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, OSError)
    assert assert_consistent(tmp_path, "other")["stages"]["cues"]["status"] == "succeeded"


def test_a_full_catalog_fails_only_the_title_being_recorded(make_video, tmp_path, monkeypatch):
    one, _ = make_video("tiny.mp4", TINY)
    two, _ = make_video("other.mp4", OTHER)
    from prism.catalog import _storage_errors

    real = SQLiteCatalog._upsert.__wrapped__

    def upsert(self, table, row):
        if row.get("title_id") == "tiny" and table == "stages":
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, table, row)

    monkeypatch.setattr(SQLiteCatalog, "_upsert", _storage_errors(upsert))
    tiny, other = Runner(tmp_path).run([one, two], ["cues"])
    assert tiny.status == "failed" and "database or disk is full" in tiny.reason and "catalog" in tiny.reason
    assert other.status == "succeeded"


def test_a_directory_given_as_a_video_fails_that_title_only(make_video, tmp_path):
    path, _ = make_video("tiny.mp4", TINY)
    folder = tmp_path / "season1.mp4"
    folder.mkdir()
    result = cli.invoke(app, ["run", str(folder), str(path), "--out", str(tmp_path / "out"), "--stages", "cues"])
    assert result.exit_code == 1, result.output
    assert f"{folder}: is a directory" in result.output and "1/2 titles succeeded" in result.output


@pytest.fixture
def unprivileged(tmp_path):
    """A CLI runner without the root powers that read chmod 000 files and write read-only folders."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot drop the capabilities that bypass permissions")
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", drop, "--inh-caps", drop]

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [*prefix, sys.executable, "-m", "prism.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)

    yield run
    for p in tmp_path.rglob("*"):  # let pytest clean up
        p.chmod(0o755)


def test_unreadable_input_fails_that_title_only(make_video, unprivileged, tmp_path):
    shared = tmp_path
    one, _ = make_video("tiny.mp4", TINY)
    two, _ = make_video("other.mp4", OTHER)
    locked, ok = shared / "locked.mp4", shared / "ok.mp4"
    shutil.copy(one, locked)
    shutil.copy(two, ok)
    locked.chmod(0o000)
    ok.chmod(0o644)
    missing = shared / "missing.mp4"
    proc = unprivileged("run", str(locked), str(missing), str(ok), "--out", str(shared / "out"), "--stages", "cues")
    assert proc.returncode == 1, proc.stderr
    assert f"FAILED {locked}: cannot read the file (Permission denied)" in proc.stderr
    assert f"FAILED {missing}: file not found" in proc.stderr
    assert "1/3 titles succeeded" in proc.stdout and "Traceback" not in proc.stderr


def test_read_only_out_dir_exits_2_with_one_line(make_video, unprivileged, tmp_path):
    shared = tmp_path
    one, _ = make_video("tiny.mp4", TINY)
    video = shared / "v.mp4"
    shutil.copy(one, video)
    video.chmod(0o644)
    out = shared / "out"
    out.mkdir()
    out.chmod(0o555)
    proc = unprivileged("run", str(video), "--out", str(out), "--stages", "cues")
    assert proc.returncode == 2, proc.stderr
    assert f"error: output directory {out} is not writable" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
