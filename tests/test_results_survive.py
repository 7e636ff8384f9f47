"""A failed, misconfigured, killed or disturbed run never destroys or misstates good results (issue 19, items 1-3).

The runner's logic is exercised with the cheap ``parts`` -> ``tally`` stages (tests/cheap_stages.py);
the configuration errors go through the CLI, as a user meets them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prism import runner as runner_module
from prism.artifacts import read_manifest
from prism.catalog import SQLiteCatalog
from prism.cli import app
from prism.errors import MediaError
from prism.runner import Runner, fingerprint, sha256_file
from prism.stages import base
from prism.store import LocalStore
from prism.synth import Shot, Title

cli = CliRunner()
TINY = Title([Shot("testsrc2", 1.0), Shot("mandelbrot", 1.0)], width=160, height=90)
OTHER = Title([Shot("life", 1.0), Shot("testsrc2", 1.0)], width=160, height=90, tone_hz=660.0)


@pytest.fixture
def episode(make_video, tmp_path) -> Path:
    """A private copy of the tiny title (tests replace its content)."""
    path = tmp_path / "episode.mp4"
    shutil.copy(make_video("tiny.mp4", TINY)[0], path)
    return path


def snapshot(out: Path, title_id: str) -> dict:
    """Everything a user could read about a title: its files' bytes, its manifest stages, its catalog records."""
    tdir = out / "titles" / title_id
    files = {
        p.relative_to(tdir).as_posix(): p.read_bytes()
        for p in sorted(tdir.rglob("*"))
        if p.is_file() and p.name != "manifest.json"  # its stages are compared; its updated_at may move
    }
    manifest = read_manifest(tdir)
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    records = {r.stage: asdict(r) for r in catalog.list_stages(title_id)}
    catalog.close()
    return {"files": files, "stages": manifest["stages"], "catalog": records}


def stale_successes(out: Path, title_id: str, *, recording: str | None = None) -> list[str]:
    """Stages that the manifest or the catalog call succeeded although they were not made from the
    source and the inputs recorded now (``recording``: the stage whose own record is being written)."""
    manifest = read_manifest(out / "titles" / title_id)
    known = base.registry()
    good = {}
    for name, entry in manifest["stages"].items():
        if entry["status"] != "succeeded":
            continue
        stage = known[name](entry["params"])
        upstream = [manifest["stages"][d] for d in stage.requires]
        ok = all(u["status"] == "succeeded" for u in upstream) and entry["fingerprint"] == fingerprint(
            manifest["source"]["sha256"], stage, [u["fingerprint"] for u in upstream]
        )
        if ok:
            good[name] = entry["fingerprint"]
    stale = [f"manifest:{n}" for n, e in manifest["stages"].items() if e["status"] == "succeeded" and n not in good]
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    for record in catalog.list_stages(title_id):
        if record.status == "succeeded" and record.stage != recording and good.get(record.stage) != record.fingerprint:
            stale.append(f"catalog:{record.stage}")
    catalog.close()
    return stale


# ------------------------------------------------------------------ 1: a failure keeps what was there


def _fail_parts(monkeypatch, exc: Exception) -> None:
    def run(self, ctx):
        raise exc

    monkeypatch.setattr(base.registry()["parts"], "run", run)


@pytest.mark.parametrize("params", [{}, {"parts": {"count": 3, "label": "b"}}])
def test_a_failing_stage_leaves_its_published_results_as_they_were(
    episode, tmp_path, cheap_stages, monkeypatch, params
):
    out = tmp_path / "out"
    Runner(out).run([episode], cheap_stages)
    before = snapshot(out, "episode")
    with monkeypatch.context() as mp:
        _fail_parts(mp, MediaError(episode, "decoder crashed"))
        [outcome] = Runner(out, params=params, force=True).run([episode], cheap_stages)
    assert outcome.status == "failed" and outcome.reason == f"{episode}: decoder crashed"
    assert [(s.stage, s.status) for s in outcome.stages] == [("parts", "failed"), ("tally", "blocked")]
    assert snapshot(out, "episode") == before  # files, manifest entries and catalog records untouched
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    title = catalog.get_title("episode")
    assert (title.status, title.reason) == ("failed", f"{episode}: decoder crashed")
    # a successful rerun replaces them
    [again] = Runner(out, params={"parts": {"count": 3, "label": "b"}}).run([episode], cheap_stages)
    assert again.status == "succeeded" and [s.reused for s in again.stages] == [False, False]
    files = snapshot(out, "episode")["files"]
    assert sorted(f for f in files if f.startswith("parts/")) == ["parts/b-0.txt", "parts/b-1.txt", "parts/b-2.txt"]
    assert stale_successes(out, "episode") == []


def test_a_failing_downstream_stage_keeps_its_results_but_not_as_a_success(
    episode, tmp_path, cheap_stages, monkeypatch
):
    """Upstream rerun with new params, downstream fails: its old files stay, recorded stale (not succeeded)."""
    out = tmp_path / "out"
    Runner(out).run([episode], cheap_stages)
    old_tally = (out / "titles" / "episode" / "tally.parquet").read_bytes()

    def run(self, ctx):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(base.registry()["tally"], "run", run)
    [outcome] = Runner(out, params={"parts": {"count": 3}}).run([episode], ["parts"])
    assert [(s.stage, s.status) for s in outcome.stages] == [("parts", "succeeded"), ("tally", "failed")]
    manifest = read_manifest(out / "titles" / "episode")
    assert manifest["stages"]["tally"]["status"] == "stale" and manifest["stages"]["tally"]["outputs"] == [
        "tally.parquet"
    ]
    assert (out / "titles" / "episode" / "tally.parquet").read_bytes() == old_tally
    assert SQLiteCatalog(out / "catalog.sqlite").get_stage("episode", "tally").status == "stale"
    assert stale_successes(out, "episode") == []


def test_a_damaged_result_is_not_kept_by_a_failing_rerun(episode, tmp_path, cheap_stages, monkeypatch):
    out = tmp_path / "out"
    Runner(out).run([episode], cheap_stages)
    (out / "titles" / "episode" / "parts.parquet").write_bytes(b"damaged")
    _fail_parts(monkeypatch, MediaError(episode, "decoder crashed"))
    [outcome] = Runner(out).run([episode], cheap_stages)
    assert [(s.stage, s.status) for s in outcome.stages] == [("parts", "failed"), ("tally", "blocked")]
    stages = read_manifest(out / "titles" / "episode")["stages"]
    assert (stages["parts"]["status"], stages["parts"]["outputs"]) == ("failed", [])
    assert stages["tally"]["status"] == "stale"  # kept, but no longer made from a succeeded input
    assert not (out / "titles" / "episode" / "parts.parquet").exists()
    assert stale_successes(out, "episode") == []


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--stages", "parts,audio", "--force", "--param", "audio.model=/a/typo"], {}, "audio.model='/a/typo'"),
        (["--stages", "parts,audio", "--force"], {"PRISM_ASR_MODEL": "/a/typo"}, "PRISM_ASR_MODEL='/a/typo'"),
        (["--stages", "shots", "--force"], {"PRISM_DECODE_CHUNKS": "abc"}, "PRISM_DECODE_CHUNKS='abc'"),
        (["--stages", "parts", "--force"], {"PRISM_OVERLAP_STAGES": "sometimes"}, "PRISM_OVERLAP_STAGES='sometimes'"),
        (["--stages", "parts,tally", "--force", "--param", "embeddings.model=/a/typo"], {}, "embeddings.model='/a/typo'"),
    ],
)  # fmt: skip
def test_a_configuration_error_exits_2_before_any_title_is_touched(
    args, env, setting, episode, tmp_path, cheap_stages, monkeypatch
):
    out = tmp_path / "out"
    Runner(out).run([episode], cheap_stages)
    before = snapshot(out, "episode")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli.invoke(app, ["run", str(episode), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert f"error: {setting}" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(out, "episode") == before


# ------------------------------------------------------------------ 2: no instant shows a stale success


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing in the runner catches it."""


def _register_solo() -> str:
    """A stage that requires nothing (like ``audio``): only the source's hash ties it to the title's content."""

    @base.register
    class Solo(base.Stage):
        name = "solo"

        def model(self):
            return base.ModelInfo("solo", "1")

        def run(self, ctx):
            (ctx.staging / "solo.txt").write_text(f"{ctx.info.duration_s:.3f}")
            return base.StageResult(outputs=["solo.txt"])

    return "solo"


def test_a_kill_after_the_redelivered_upstream_publishes_leaves_no_stale_success(
    episode, make_video, tmp_path, cheap_stages, monkeypatch
):
    order = [*cheap_stages, _register_solo()]
    out = tmp_path / "out"
    Runner(out).run([episode], order)
    shutil.copy(make_video("other.mp4", OTHER)[0], episode)  # re-delivered: new content at the same path
    real, seen = LocalStore.record, []

    def record(self, manifest, name, rec):
        assert stale_successes(out, "episode") == [], f"before the manifest write of {name}"
        real(self, manifest, name, rec)
        seen.append((name, stale_successes(out, "episode", recording=name)))
        if name == "parts":
            raise Killed  # kill -9 right after the upstream's manifest write

    monkeypatch.setattr(LocalStore, "record", record)
    with pytest.raises(Killed):
        Runner(out).run([episode], order)
    assert seen == [("parts", [])]
    manifest = read_manifest(out / "titles" / "episode")
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    assert manifest["stages"]["parts"]["status"] == "succeeded"
    for name in ("tally", "solo"):  # made from the old content: neither record may still say succeeded
        assert manifest["stages"][name]["status"] == "stale", name
        assert catalog.get_stage("episode", name).status == "stale", name
    monkeypatch.setattr(LocalStore, "record", real)
    [outcome] = Runner(out).run([episode], order)  # the next run brings them up to date
    assert {s.stage: (s.status, s.reused) for s in outcome.stages} == {
        "parts": ("skipped", True), "tally": ("succeeded", False), "solo": ("succeeded", False)
    }  # fmt: skip
    assert stale_successes(out, "episode") == []


# ------------------------------------------------------------------ 3: the source changes under a run


def test_a_source_replaced_while_it_is_processed_fails_the_title(
    episode, make_video, tmp_path, cheap_stages, monkeypatch
):
    out = tmp_path / "out"
    Runner(out).run([episode], cheap_stages)
    before = snapshot(out, "episode")
    parts = base.registry()["parts"]
    real_run = parts.run

    def run(self, ctx):
        result = real_run(self, ctx)
        shutil.copy(make_video("other.mp4", OTHER)[0], episode)  # a new master lands mid-run
        return result

    with monkeypatch.context() as mp:
        mp.setattr(parts, "run", run)
        [outcome] = Runner(out, force=True).run([episode], cheap_stages)
    assert outcome.status == "failed"
    assert "the file changed while it was being processed" in outcome.reason and str(episode) in outcome.reason
    assert snapshot(out, "episode") == before  # nothing recorded under the hash of the old content
    [again] = Runner(out).run([episode], cheap_stages)  # the new content is hashed and processed
    assert again.status == "succeeded" and not any(s.reused for s in again.stages)
    with open(episode, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    assert read_manifest(out / "titles" / "episode")["source"]["sha256"] == digest


@pytest.mark.parametrize("edit", ["in_place", "renamed_over"])
def test_the_hash_cache_sees_edits_that_keep_size_and_mtime(edit, tmp_path, monkeypatch):
    """``cp -p`` rewrites in place and puts the mtime back; ``rsync -a`` renames a new inode over it."""
    monkeypatch.setattr(runner_module, "RACY_S", 0.0, raising=False)  # cache even a file written just now
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite")
    path = tmp_path / "master.mov"
    path.write_bytes(b"A" * 4096)
    first = sha256_file(path, catalog)
    assert sha256_file(path, catalog) == first
    st = path.stat()
    if edit == "in_place":
        with open(path, "r+b") as fh:
            fh.write(b"B" * 4096)
    else:
        tmp = tmp_path / ".master.mov.rsync"
        tmp.write_bytes(b"B" * 4096)
        os.replace(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert sha256_file(path, catalog) != first


def test_the_hash_cache_is_used_while_the_file_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "RACY_S", 0.0)
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite")
    path = tmp_path / "master.mov"
    path.write_bytes(b"A" * 4096)
    sha256_file(path, catalog)
    with catalog._db:  # what comes back is the stored value, not a new hash
        catalog._db.execute("UPDATE source_digests SET sha256 = 'planted'")
    assert sha256_file(path, catalog) == "planted"


def test_a_file_changed_just_now_is_hashed_but_not_cached(tmp_path):
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite")
    path = tmp_path / "fresh.mov"
    path.write_bytes(b"fresh")
    sha256_file(path, catalog)
    assert catalog.cached_hash(path.resolve(), runner_module.source_identity(path)) is None


@pytest.mark.slow
def test_a_kill_after_redelivered_shots_publish_leaves_keyframes_and_cues_stale(
    episode, make_video, tmp_path, monkeypatch
):
    """The issue's scenario with the real stages: keyframes must never say succeeded beside shots they were not cut from."""
    out = tmp_path / "out"
    Runner(out).run([episode], ["keyframes", "cues"])
    shutil.copy(make_video("other.mp4", OTHER)[0], episode)
    real = LocalStore.record

    def record(self, manifest, name, rec):
        real(self, manifest, name, rec)
        if name == "shots":
            raise Killed

    monkeypatch.setattr(LocalStore, "record", record)
    monkeypatch.setenv("PRISM_OVERLAP_STAGES", "0")
    with pytest.raises(Killed):
        Runner(out).run([episode], ["shots"])
    stages = read_manifest(out / "titles" / "episode")["stages"]
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    assert stages["shots"]["status"] == "succeeded" and stages["keyframes"]["status"] == "stale"
    for name in ("keyframes", "cues"):
        if stages[name]["status"] != "succeeded":  # (cues may have rerun before shots)
            assert stages[name]["status"] == "stale" and catalog.get_stage("episode", name).status == "stale", name
    assert stale_successes(out, "episode") == []
    monkeypatch.setattr(LocalStore, "record", real)
    [outcome] = Runner(out).run([episode], ["shots"])
    assert outcome.status == "succeeded" and stale_successes(out, "episode") == []
