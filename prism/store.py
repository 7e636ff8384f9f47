"""Where one title's stage results are kept: the interface the Runner plans against and commits through.

The Runner alone decides what runs (the up-to-date rule, ``--force``, dependents that must
follow, blocked stages); a store only answers what is recorded and whether the recorded files
are still there, and makes a stage's results durable. Two implementations:

- :class:`LocalStore`: ``<out>/titles/<title_id>/`` + ``manifest.json`` + the SQLite catalog,
  with a file lock per title and a journal per stage so a killed run is repaired (``prism run``).
- :class:`prism.cloud.store.S3Store`: the artifacts bucket + the DynamoDB catalog (the Batch
  worker). The manifest there is ``finalize``'s job; the store writes stage records.

Both stage and publish through the same local directory layout (``title_dir``), so a stage reads
its inputs from ``title_dir`` wherever it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from prism import tables
from prism.artifacts import (
    JOURNAL_PREFIX,
    LOCKS_DIR,
    MANIFEST,
    STAGING_DIR,
    WORK_DIR,
    listed_outputs,
    outputs_intact,
    publish,
    read_manifest,
    remove_outputs,
    title_dir,
    write_json,
)
from prism.catalog import Catalog, StageRecord, TitleRecord
from prism.errors import StorageError

log = logging.getLogger(__name__)


class TitleStore(Protocol):
    """One title's recorded stages and their files, as the Runner needs them."""

    title_id: str
    title_dir: Path  # a local directory: stages read their inputs here; published files land here
    runs_dependents: bool  # False: recorded dependents outside the run are marked stale, not run
    owns_manifest: bool  # True: a failure recorded over earlier results would lose the title's only record of them

    def lock(self, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        """Exclusive access to the title while it is written (yields False when ``wait`` is off and it is held)."""

    def load(self) -> dict[str, Any] | None:
        """The recorded manifest (``source``, ``stages``), after repairing what an interrupted run left."""

    def outputs_intact(self, entry: dict[str, Any]) -> bool:
        """Whether every file a recorded stage entry lists is still stored as recorded."""

    def fetch(self, entry: dict[str, Any]) -> None:
        """Make a recorded stage's outputs readable under ``title_dir`` (a stage that requires it runs next)."""

    def publishing(self, name: str, touched: set[str]) -> contextlib.AbstractContextManager[None]:
        """Around one stage's commit: what must be undone if the process dies inside it."""

    def publish(self, staging: Path, outputs: list[str]) -> None:
        """Move a stage's staged files into the store (raises OSError when it cannot)."""

    def record(self, manifest: dict[str, Any], name: str, record: StageRecord) -> None:
        """Make ``manifest["stages"][name]`` and its catalog record durable."""

    def remove(self, relatives: set[str], *, replaced: bool) -> None:
        """Delete stored files no stage entry lists any more (``replaced``: the stage's new run succeeded)."""

    def sync(self, manifest: dict[str, Any], name: str, record: StageRecord) -> None:
        """A reused stage: rewrite its catalog record if it fell behind its manifest entry."""

    def mark_stale(self, manifest: dict[str, Any], name: str, record: StageRecord, seen: str | None) -> bool:
        """Record ``name`` stale unless its record changed since it was loaded (fingerprint ``seen``)."""

    def finish(self, manifest: dict[str, Any], record: TitleRecord) -> None:
        """After the title's stages: the manifest and title record, where this store owns them."""

    def note_title_failure(self, record: TitleRecord) -> None:
        """Best effort: mark the title failed, unless its id belongs to another source."""


class LocalStore:
    """``<out>/titles/<title_id>/``, its ``manifest.json`` and the SQLite catalog (see module docstring).

    One process writes a title at a time (a file lock under ``<out>/.locks/``). Every change of a
    stage's files is journaled first, so a run killed at any point is repaired by ``load``: files
    the manifest does not list are removed, and a listed file whose size or hash differs from the
    manifest fails ``outputs_intact``, so its stage runs again.
    """

    runs_dependents = True
    owns_manifest = True

    def __init__(self, out_dir: str | Path, title_id: str, catalog: Catalog):
        self.out_dir = Path(out_dir)
        self.title_id = title_id
        self.catalog = catalog
        self.title_dir = title_dir(self.out_dir, title_id)

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold ``<out>/.locks/<title_id>.lock`` (released by the OS if the process dies)."""
        from filelock import FileLock, Timeout

        path = self.out_dir / LOCKS_DIR / f"{self.title_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                yield False
                return
            log.info("%s: another run is writing this title; waiting for it", self.title_id)
            lock.acquire()
        try:
            yield True
        finally:
            lock.release()

    def load(self) -> dict[str, Any] | None:
        self.title_dir.mkdir(parents=True, exist_ok=True)
        manifest = self._read()
        self._recover(manifest)
        return manifest

    def _read(self) -> dict[str, Any] | None:
        tdir = self.title_dir
        try:
            manifest = read_manifest(tdir)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable manifest (%s); the title's stages run again", tdir, exc)
            return None
        if manifest is not None and not (
            isinstance(manifest.get("stages"), dict) and isinstance(manifest.get("source"), dict)
        ):
            log.warning("%s: manifest without stages or source; the title's stages run again", tdir)
            return None
        return manifest

    def _recover(self, manifest: dict[str, Any] | None) -> None:
        """Undo what a run killed on this title left behind (we hold its lock, so none is running)."""
        tdir = self.title_dir
        shutil.rmtree(tdir / STAGING_DIR, ignore_errors=True)
        shutil.rmtree(self.out_dir / WORK_DIR / self.title_id, ignore_errors=True)
        for tmp in tdir.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
        listed = listed_outputs(manifest)
        for journal in tdir.glob(f"{JOURNAL_PREFIX}*.json"):
            try:
                touched = set(json.loads(journal.read_text(encoding="utf-8"))["outputs"])
            except (OSError, ValueError, KeyError, TypeError):
                touched = set()
            if touched - listed:
                log.info(
                    "%s: removing %d file(s) an interrupted run left unlisted", self.title_id, len(touched - listed)
                )
            remove_outputs(tdir, touched - listed)
            journal.unlink(missing_ok=True)

    def outputs_intact(self, entry: dict[str, Any]) -> bool:
        return outputs_intact(self.title_dir, entry)

    def fetch(self, entry: dict[str, Any]) -> None:
        """Nothing to do: recorded outputs are already in ``title_dir``."""

    @contextlib.contextmanager
    def publishing(self, name: str, touched: set[str]) -> Iterator[None]:
        """Journal every file the commit changes; the journal is dropped only once the commit is done."""
        journal = self.title_dir / f"{JOURNAL_PREFIX}{name}.json"
        if touched:
            write_json(journal, {"stage": name, "outputs": sorted(touched)})
        yield
        journal.unlink(missing_ok=True)

    def publish(self, staging: Path, outputs: list[str]) -> None:
        publish(staging, self.title_dir, outputs)

    def record(self, manifest: dict[str, Any], name: str, record: StageRecord) -> None:
        write_json(self.title_dir / MANIFEST, manifest)
        self.catalog.put_stage(record)

    def remove(self, relatives: set[str], *, replaced: bool) -> None:
        """Always: the directory holds exactly what the manifest lists."""
        remove_outputs(self.title_dir, relatives)

    def sync(self, manifest: dict[str, Any], name: str, record: StageRecord) -> None:
        previous = self.catalog.get_stage(self.title_id, name)
        if previous is not None and (previous.status, previous.fingerprint, previous.outputs) == (
            record.status, record.fingerprint, record.outputs
        ):  # fmt: skip
            return
        self.catalog.put_stage(record)

    def mark_stale(self, manifest: dict[str, Any], name: str, record: StageRecord, seen: str | None) -> bool:
        """Locally dependents join the run instead; kept so both stores honour one contract."""
        previous = self.catalog.get_stage(self.title_id, name)
        if previous is not None and previous.fingerprint != seen:
            return False
        self.record(manifest, name, record)
        return True

    def finish(self, manifest: dict[str, Any], record: TitleRecord) -> None:
        # The title's rows of the catalogue-wide tables first: a full disk there fails the title like any
        # other write; a kill leaves at most a hidden temporary file, which the next run's write removes.
        tables.write_local(self.out_dir, self.title_dir, manifest)
        write_json(self.title_dir / MANIFEST, manifest)
        self.catalog.put_title(record)

    def note_title_failure(self, record: TitleRecord) -> None:
        try:
            known = self.catalog.get_title(self.title_id)
            if known is not None and known.source_uri != record.source_uri:
                return
            if known is not None:
                record.source_bytes, record.source_sha256 = known.source_bytes, known.source_sha256
            self.catalog.put_title(record)
        except (StorageError, OSError) as exc:
            log.warning("%s: the failure could not be recorded in the catalog either: %s", self.title_id, exc)
