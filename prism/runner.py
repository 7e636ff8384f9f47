"""Run stages over titles: order them, skip what is up to date, publish atomically, record all.

This is the one place that turns a typed error into a ``failed`` status with a reason; a failed
stage or title never stops the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prism import __version__
from prism.artifacts import (
    JOURNAL_PREFIX,
    LOCKS_DIR,
    STAGING_DIR,
    WORK_DIR,
    blocked_reason,
    file_facts,
    listed_outputs,
    new_manifest,
    now_iso,
    outputs_intact,
    publish,
    read_manifest,
    remove_empty_dirs,
    remove_outputs,
    title_dir,
    title_id_for,
    write_json,
)
from prism.catalog import Catalog, SQLiteCatalog, StageRecord, TitleRecord
from prism.errors import ConfigError, MediaError, PrismError, StorageError
from prism.media import MediaInfo, probe
from prism.stages.base import SharedMedia, Stage, StageContext, StageResult, registry, resolve_order

log = logging.getLogger(__name__)

UP_TO_DATE = "up to date: outputs exist for the same source, model and params (use --force to rerun)"


@dataclass
class StageOutcome:
    stage: str
    status: str  # succeeded | failed | skipped
    reason: str | None = None
    duration_s: float = 0.0
    summary: str = ""
    outputs: list[str] = field(default_factory=list)
    reused: bool = False  # skipped because its outputs were already up to date
    blocked: bool = False  # skipped because a stage it requires did not succeed (fails the title)


@dataclass
class TitleOutcome:
    title_id: str
    source: str
    status: str  # succeeded | failed
    reason: str | None
    stages: list[StageOutcome]
    title_dir: Path
    recorded: bool = True  # False: failed before it could be written (id taken by another source, storage)


class RunEvents(Protocol):
    def stage_started(self, title_id: str, stage: str) -> None: ...
    def stage_progress(self, title_id: str, stage: str, done: int, total: int | None, label: str) -> None: ...
    def stage_finished(self, title_id: str, outcome: StageOutcome) -> None: ...


class _NoEvents:
    def stage_started(self, title_id: str, stage: str) -> None:
        pass

    def stage_progress(self, title_id: str, stage: str, done: int, total: int | None, label: str) -> None:
        pass

    def stage_finished(self, title_id: str, outcome: StageOutcome) -> None:
        pass


def sha256_file(path: Path, catalog: Catalog | SQLiteCatalog | None = None) -> str:
    """Content hash of the source, cached in the catalog by (path, size, mtime) when it can."""
    stat = path.stat()
    if not hasattr(catalog, "cached_hash"):
        catalog = None
    if catalog is not None and (cached := catalog.cached_hash(path.resolve(), stat.st_size, stat.st_mtime_ns)):
        return cached
    try:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise MediaError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if catalog is not None:
        catalog.store_hash(path.resolve(), stat.st_size, stat.st_mtime_ns, digest)  # type: ignore[attr-defined]
    return digest


def fingerprint(source_sha256: str | None, stage: Stage, upstream: list[str]) -> str:
    model = stage.model()
    blob = json.dumps([source_sha256, stage.name, model.name, model.version, stage.params_hash(), upstream])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Runner:
    """Processes titles into ``<out_dir>/titles/<title_id>/`` and records them in the catalog.

    One process writes a title at a time (a file lock per title), so parallel runs on one
    ``out_dir`` serialize per title and never see each other's half-written state. Every
    change of a stage's files is journaled first, so a run killed at any point is repaired by
    the next one: files the manifest does not list are removed, and a listed file whose size
    or hash differs from the manifest makes its stage run again.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        catalog: Catalog | None = None,
        params: dict[str, dict[str, Any]] | None = None,
        force: bool = False,
        events: RunEvents | None = None,
    ):
        self.out_dir = Path(out_dir)
        if catalog is None:
            _require_writable(self.out_dir)
            catalog = SQLiteCatalog(self.out_dir / "catalog.sqlite")
        self.catalog = catalog
        self.params = params or {}
        self.force = force
        self.events = events or _NoEvents()
        self._stages: dict[str, Stage] = {}

    def run(self, sources: list[str | Path], stages: list[str] | None = None) -> list[TitleOutcome]:
        """Process each source in turn; configuration errors raise ConfigError before any work.

        A title that fails, whatever the cause (bad input, a full disk, an id another source
        holds), fails alone: the batch goes on.
        """
        order = resolve_order(stages)
        self.build_stages(order)
        self._sweep_work()
        claimed: dict[str, Path] = {}
        outcomes = []
        for src in sources:
            source = Path(src)
            title_id = title_id_for(source)
            first = claimed.setdefault(title_id, source)
            if not _same_path(first, source):
                reason = (
                    f"{source}: title id {title_id!r} is also the id of {first} in this run "
                    "(ids come from file names); rename one of them"
                )
                outcomes.append(self._unrecorded(title_id, source, order, reason))
                continue
            outcomes.append(self._run_contained(source, order, title_id))
        return outcomes

    def build_stages(self, order: list[str]) -> dict[str, Stage]:
        """Instantiate (and so validate) every stage's parameters once."""
        stray = sorted(set(self.params) - set(registry()))
        if stray:
            raise ConfigError(f"parameters given for unknown stage(s) {stray}")
        missing = [name for name in dict.fromkeys([*order, *self.params]) if name not in self._stages]
        for name in missing:  # params given for a stage not run now are checked too: it may join as a dependent
            self._stages[name] = registry()[name](self.params.get(name))
        return self._stages

    def _run_contained(self, source: Path, order: list[str], title_id: str) -> TitleOutcome:
        """``run_title``, with a storage failure or a runner bug failing this title only."""
        try:
            return self.run_title(source, order, title_id)
        except (StorageError, OSError) as exc:
            reason = f"{source}: cannot write its results: {exc}"
            log.warning("%s", reason)
        except Exception as exc:
            log.exception("internal error on %s", source)
            reason = f"{source}: internal error: {type(exc).__name__}: {exc}"
        self._note_title_failure(title_id, source, reason)
        return self._unrecorded(title_id, source, order, reason)

    def run_title(
        self,
        source: Path,
        order: list[str],
        title_id: str | None = None,
        *,
        source_facts: dict[str, Any] | None = None,
        upstream: dict[str, str] | None = None,
    ) -> TitleOutcome:
        """Run ``order`` for one title.

        ``source_facts`` (uri, etag, sha256) describe where the local ``source`` copy came from,
        e.g. an S3 object, so the hash is not recomputed. ``upstream`` gives the fingerprints of
        required stages that ran elsewhere (another Batch job), so ``order`` can be one stage.
        Stages the title already has that depend on a stage of ``order`` (or every recorded
        stage, when the source's content changed) are brought up to date too, so no stage is
        left ``succeeded`` on inputs that have since changed.
        """
        title_id = title_id or title_id_for(source)
        with self._title_lock(title_id):
            return self._run_title(source, order, title_id, source_facts or {}, upstream or {})

    def _run_title(
        self, source: Path, order: list[str], title_id: str, given: dict[str, Any], upstream: dict[str, str]
    ) -> TitleOutcome:
        tdir = title_dir(self.out_dir, title_id)
        tdir.mkdir(parents=True, exist_ok=True)
        existing = self._load_manifest(tdir)
        self._recover(title_id, tdir, existing)
        source_facts: dict[str, Any] = {
            "uri": source.resolve().as_uri() if source.is_absolute() or source.exists() else str(source),
            "bytes": None,
            "sha256": None,
            "etag": None,
            "probe": None,
        }
        source_facts.update({k: v for k, v in given.items() if k in ("uri", "etag", "sha256")})
        owner = existing["source"] if existing else None
        # no manifest (lost, or a fresh scratch dir): the catalog says who holds the id, unless the
        # caller (the Batch worker) names the source itself, having chosen the id upstream
        if owner is None and not given and (record := self.catalog.get_title(title_id)) is not None:
            owner = {"uri": record.source_uri, "sha256": record.source_sha256}
        try:
            _check_source(source)
            info = probe(source)
            source_facts.update(
                bytes=info.size_bytes,
                sha256=source_facts["sha256"] or sha256_file(source, self.catalog),
                probe=_probe_facts(info),
            )
        except MediaError as exc:
            if existing and any(e.get("status") == "succeeded" for e in existing["stages"].values()):
                # earlier results of this id are kept: they match the source they were made from
                if owner and owner.get("uri") == source_facts["uri"]:
                    self._note_title_failure(title_id, source, str(exc))
                return self._unrecorded(title_id, source, order, str(exc))
            if source.exists():
                source_facts["bytes"] = source.stat().st_size
            manifest = existing or new_manifest(title_id, source_facts, __version__)
            manifest["source"] = source_facts
            outcomes = [self._record_failure(title_id, manifest, name, str(exc), None) for name in order]
            return self._finish_title(title_id, source, tdir, manifest, outcomes)
        if (
            owner
            and owner.get("sha256") not in (None, source_facts["sha256"])
            and owner.get("uri") != source_facts["uri"]
        ):
            reason = (
                f"{source}: title id {title_id!r} already holds another source ({_display(owner['uri'])}, sha256 "
                f"{owner['sha256'][:12]}…); rename the file, or remove {tdir} to replace that title"
            )
            return self._unrecorded(title_id, source, order, reason)
        changed = bool(existing and existing["source"].get("sha256") not in (None, source_facts["sha256"]))
        if changed:
            log.info("%s: the source's content changed; every stage the title has runs again", title_id)
        manifest = existing or new_manifest(title_id, source_facts, __version__)
        manifest["prism_version"] = __version__
        manifest["source"] = source_facts
        stages, forced = self._plan(order, manifest, changed, upstream)
        run_dir = self.out_dir / WORK_DIR / title_id / uuid.uuid4().hex[:8]
        shared = SharedMedia(run_dir)
        outcomes = []
        fingerprints: dict[str, str] = dict(upstream)
        try:
            for name, stage in stages.items():
                outcome = self._run_stage(
                    title_id, source, info, tdir, manifest, shared, stage, fingerprints, name in forced
                )
                outcomes.append(outcome)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            remove_empty_dirs(run_dir.parent, run_dir.parent.parent)
            shutil.rmtree(tdir / STAGING_DIR, ignore_errors=True)
        return self._finish_title(title_id, source, tdir, manifest, outcomes)

    def _plan(
        self, order: list[str], manifest: dict[str, Any], changed: bool, upstream: dict[str, str]
    ) -> tuple[dict[str, Stage], set[str]]:
        """The stages to run for this title, and those ``--force`` applies to (the requested ones).

        Recorded stages downstream of a requested one join the run (with the shaping params
        they were made with, unless given now): each reruns if its inputs changed, and is
        reused if not.
        """
        known = registry()
        recorded = [name for name in manifest["stages"] if name in known and name not in order and name not in upstream]
        requested = set(order)
        extra = [name for name in recorded if changed or _ancestors(name, known) & requested]
        stages = {name: self.build_stages([name])[name] for name in order}
        if not extra:
            return stages, requested
        full = resolve_order([*order, *extra])
        result: dict[str, Stage] = {}
        for name in full:
            if name in stages:
                result[name] = stages[name]
                continue
            entry = manifest["stages"].get(name, {})
            cls = known[name]
            params = {k: v for k, v in (entry.get("params") or {}).items() if k not in cls.execution_params}
            params.update(self.params.get(name, {}))
            try:
                result[name] = cls(params)
            except ConfigError as exc:
                log.warning("%s: recorded params no longer valid (%s); using the defaults", name, exc)
                result[name] = self.build_stages([name])[name]
        log.info("%s also run to keep them consistent with %s", [n for n in full if n not in stages], order)
        return result, requested

    def _sweep_work(self) -> None:
        """Remove scratch decodes that killed runs left in ``<out>/.work/`` for titles nobody is writing."""
        work = self.out_dir / WORK_DIR
        if not work.is_dir():
            return
        for entry in sorted(work.iterdir()):
            with self._title_lock(entry.name, wait=False) as held:
                if held:
                    log.info("removing %s left by an interrupted run", entry)
                    shutil.rmtree(entry, ignore_errors=True)
        remove_empty_dirs(work, self.out_dir)

    @contextlib.contextmanager
    def _title_lock(self, title_id: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold ``<out>/.locks/<title_id>.lock`` (released by the OS if the process dies)."""
        from filelock import FileLock, Timeout

        path = self.out_dir / LOCKS_DIR / f"{title_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                yield False
                return
            log.info("%s: another run is writing this title; waiting for it", title_id)
            lock.acquire()
        try:
            yield True
        finally:
            lock.release()

    def _load_manifest(self, tdir: Path) -> dict[str, Any] | None:
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

    def _recover(self, title_id: str, tdir: Path, manifest: dict[str, Any] | None) -> None:
        """Undo what a run killed on this title left behind (we hold its lock, so none is running)."""
        shutil.rmtree(tdir / STAGING_DIR, ignore_errors=True)
        shutil.rmtree(self.out_dir / WORK_DIR / title_id, ignore_errors=True)
        for tmp in tdir.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
        listed = listed_outputs(manifest)
        for journal in tdir.glob(f"{JOURNAL_PREFIX}*.json"):
            try:
                touched = set(json.loads(journal.read_text(encoding="utf-8"))["outputs"])
            except (OSError, ValueError, KeyError, TypeError):
                touched = set()
            if touched - listed:
                log.info("%s: removing %d file(s) an interrupted run left unlisted", title_id, len(touched - listed))
            remove_outputs(tdir, touched - listed)
            journal.unlink(missing_ok=True)

    def _run_stage(
        self,
        title_id: str,
        source: Path,
        info: MediaInfo,
        tdir: Path,
        manifest: dict[str, Any],
        shared: SharedMedia,
        stage: Stage,
        fingerprints: dict[str, str],
        forced: bool,
    ) -> StageOutcome:
        name = stage.name
        blocked = [dep for dep in stage.requires if dep not in fingerprints]
        if blocked:
            reason = blocked_reason(blocked)
            outcome = self._record(title_id, manifest, stage, "skipped", reason, None, [], {}, None, None, 0.0)
            outcome.blocked = True
            return outcome
        try:
            fp = fingerprint(manifest["source"]["sha256"], stage, [fingerprints[d] for d in stage.requires])
        except Exception as exc:  # model() could not say what it is: the stage cannot run
            log.exception("stage %s: model identity failed", name)
            return self._record_failure(
                title_id, manifest, name, f"{source}: stage {name}: {type(exc).__name__}: {exc}", None
            )
        entry = manifest["stages"].get(name)
        if (
            not (self.force and forced)
            and entry is not None
            and entry.get("status") == "succeeded"
            and entry.get("fingerprint") == fp
            and outputs_intact(tdir, entry)
        ):
            fingerprints[name] = fp
            self._sync_catalog(title_id, manifest, stage, entry)
            outcome = StageOutcome(name, "skipped", UP_TO_DATE, 0.0, "", list(entry["outputs"]), reused=True)
            self.events.stage_finished(title_id, outcome)
            return outcome

        self.events.stage_started(title_id, name)
        staging = tdir / STAGING_DIR / f"{name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        ctx = StageContext(
            title_id=title_id,
            source=source,
            info=info,
            title_dir=tdir,
            staging=staging,
            shared=shared,
            progress=lambda done, total, label: self.events.stage_progress(title_id, name, done, total, label),
        )
        started = now_iso()
        decoded_before = set(shared.decode_seconds)
        t0 = time.perf_counter()
        try:
            result: StageResult | None = stage.run(ctx)
        except PrismError as exc:
            reason, result = str(exc), None
        except OSError as exc:  # the environment (disk full, permissions), not a bug: no traceback
            reason, result = f"{source}: stage {name}: {exc}", None
            log.warning("%s", reason)
        except Exception as exc:  # a bug in one stage must not take down the run
            log.exception("stage %s crashed on %s", name, source)
            reason, result = f"{source}: internal error in stage {name}: {type(exc).__name__}: {exc}", None
        elapsed = time.perf_counter() - t0
        decodes = {k: v for k, v in shared.decode_seconds.items() if k not in decoded_before}
        if result is not None and decodes:  # the shared decode this stage triggered, reported apart
            result.metrics["shared_decode_s"] = {k: round(v, 3) for k, v in decodes.items()}
        try:
            if result is None:
                return self._record(title_id, manifest, stage, "failed", reason, fp, [], {}, started, None, elapsed)
            if result.status != "succeeded":
                return self._record(
                    title_id,
                    manifest,
                    stage,
                    result.status,
                    result.reason,
                    fp,
                    [],
                    result.metrics,
                    started,
                    None,
                    elapsed,
                )
            try:
                files = {rel: file_facts(staging / rel) for rel in result.outputs}
            except OSError as exc:
                reason = f"{source}: stage {name}: an output it listed cannot be read: {exc}"
                return self._record(title_id, manifest, stage, "failed", reason, fp, [], {}, started, None, elapsed)
            outcome = self._record(
                title_id, manifest, stage, "succeeded", None, fp, result.outputs, result.metrics, started,
                result.summary, elapsed, staging=staging, files=files,
            )  # fmt: skip
            if outcome.status == "succeeded":
                fingerprints[name] = fp
            return outcome
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _record(
        self,
        title_id: str,
        manifest: dict[str, Any],
        stage: Stage,
        status: str,
        reason: str | None,
        fp: str | None,
        outputs: list[str],
        metrics: dict[str, Any],
        started: str | None,
        summary: str | None,
        elapsed: float,
        *,
        staging: Path | None = None,
        files: dict[str, Any] | None = None,
    ) -> StageOutcome:
        model = stage.model()

        def entry(status: str, reason: str | None, outputs: list[str], files: dict[str, Any], finished: str):
            return {
                "status": status,
                "reason": reason,
                "model": model.to_dict(),
                "params": stage.params_dict(),
                "params_hash": stage.params_hash(),
                "fingerprint": fp,
                "outputs": outputs,
                "files": files,
                "started_at": started,
                "finished_at": finished,
                "duration_s": round(elapsed, 3),
                "metrics": metrics,
            }

        def record(status: str, reason: str | None, outputs: list[str], finished: str) -> StageRecord:
            return StageRecord(
                title_id=title_id,
                stage=stage.name,
                status=status,
                reason=reason,
                model_name=model.name,
                model_version=model.version,
                params_hash=stage.params_hash(),
                fingerprint=fp,
                source_sha256=manifest["source"]["sha256"],
                started_at=started,
                finished_at=finished,
                duration_s=round(elapsed, 3),
                prism_version=__version__,
                outputs=outputs,
            )

        status, reason, outputs = self._commit(
            title_id, manifest, stage.name, status, reason, outputs, files or {}, staging, entry, record
        )
        outcome = StageOutcome(
            stage.name, status, reason, elapsed, (summary or "") if status == "succeeded" else "", outputs
        )
        self.events.stage_finished(title_id, outcome)
        return outcome

    def _record_failure(
        self, title_id: str, manifest: dict[str, Any], name: str, reason: str, fp: str | None
    ) -> StageOutcome:
        """Failure before a stage object exists (bad source, bad params)."""

        def entry(status: str, reason: str | None, outputs: list[str], files: dict[str, Any], finished: str):
            return {
                "status": "failed", "reason": reason, "model": None, "params": self.params.get(name, {}),
                "params_hash": None, "fingerprint": fp, "outputs": [], "files": {}, "started_at": None,
                "finished_at": finished, "duration_s": 0.0, "metrics": {},
            }  # fmt: skip

        def record(status: str, reason: str | None, outputs: list[str], finished: str) -> StageRecord:
            return StageRecord(title_id, name, "failed", reason, None, None, None, fp, manifest["source"]["sha256"],
                               None, finished, 0.0, __version__, [])  # fmt: skip

        self._commit(title_id, manifest, name, "failed", reason, [], {}, None, entry, record)
        outcome = StageOutcome(name, "failed", reason)
        self.events.stage_finished(title_id, outcome)
        return outcome

    def _commit(
        self,
        title_id: str,
        manifest: dict[str, Any],
        name: str,
        status: str,
        reason: str | None,
        outputs: list[str],
        files: dict[str, Any],
        staging: Path | None,
        entry,
        record,
    ) -> tuple[str, str | None, list[str]]:
        """Replace a stage's files and its manifest entry and catalog record, recoverably.

        Order: journal every file this changes -> move the new files in -> manifest -> catalog
        -> delete the files no entry lists any more -> drop the journal. Killed anywhere in
        between, the next run's ``_recover`` deletes unlisted journaled files, and a listed file
        that was overwritten no longer matches its recorded hash, so its stage reruns.
        """
        tdir = title_dir(self.out_dir, title_id)
        old = set(manifest["stages"].get(name, {}).get("outputs", []))
        touched = old | set(outputs)
        journal = tdir / f"{JOURNAL_PREFIX}{name}.json"
        if touched:
            write_json(journal, {"stage": name, "outputs": sorted(touched)})
        if staging is not None and outputs:
            try:
                publish(staging, tdir, outputs)
            except OSError as exc:
                status, reason, outputs, files = "failed", f"stage {name}: cannot publish its outputs: {exc}", [], {}
                log.warning("%s: %s", title_id, reason)
        finished = now_iso()
        manifest["stages"][name] = entry(status, reason, outputs, files, finished)
        manifest["updated_at"] = finished
        write_json(tdir / "manifest.json", manifest)
        self.catalog.put_stage(record(status, reason, outputs, finished))
        remove_outputs(tdir, touched - listed_outputs(manifest))
        journal.unlink(missing_ok=True)
        return status, reason, outputs

    def _sync_catalog(self, title_id: str, manifest: dict[str, Any], stage: Stage, entry: dict[str, Any]) -> None:
        """A reused stage's catalog record is rewritten from the manifest if a kill left it behind."""
        previous = self.catalog.get_stage(title_id, stage.name)
        if previous is not None and (previous.status, previous.fingerprint, previous.outputs) == (
            "succeeded", entry["fingerprint"], entry["outputs"]
        ):  # fmt: skip
            return
        model = entry.get("model") or {}
        self.catalog.put_stage(
            StageRecord(
                title_id=title_id, stage=stage.name, status="succeeded", reason=None,
                model_name=model.get("name"), model_version=model.get("version"), params_hash=entry.get("params_hash"),
                fingerprint=entry["fingerprint"], source_sha256=manifest["source"]["sha256"],
                started_at=entry.get("started_at"), finished_at=entry.get("finished_at"),
                duration_s=entry.get("duration_s"), prism_version=manifest.get("prism_version", __version__),
                outputs=list(entry["outputs"]),
            )
        )  # fmt: skip

    def _note_title_failure(self, title_id: str, source: Path, reason: str) -> None:
        """Best effort: mark the title failed in the catalog, unless the id belongs to another source."""
        try:
            record = self.catalog.get_title(title_id)
            uri = source.resolve().as_uri() if source.is_absolute() or source.exists() else str(source)
            if record is not None and record.source_uri != uri:
                return
            self.catalog.put_title(
                TitleRecord(
                    title_id=title_id,
                    source_uri=uri,
                    source_bytes=record.source_bytes if record else None,
                    source_sha256=record.source_sha256 if record else None,
                    status="failed",
                    reason=reason,
                    prism_version=__version__,
                    updated_at=now_iso(),
                )
            )
        except (StorageError, OSError) as exc:
            log.warning("%s: the failure could not be recorded in the catalog either: %s", title_id, exc)

    def _unrecorded(self, title_id: str, source: Path, order: list[str], reason: str) -> TitleOutcome:
        """A failed title whose id's manifest is left as it is (it may belong to another source)."""
        outcomes = [StageOutcome(name, "failed", reason) for name in order]
        return TitleOutcome(title_id, str(source), "failed", reason, outcomes, title_dir(self.out_dir, title_id), False)

    def _finish_title(
        self, title_id: str, source: Path, tdir: Path, manifest: dict[str, Any], outcomes: list[StageOutcome]
    ) -> TitleOutcome:
        failed = [o for o in outcomes if o.status == "failed"]
        blocked = [o for o in outcomes if o.blocked]
        status = "failed" if failed or blocked else "succeeded"
        reason = failed[0].reason if failed else (blocked[0].reason if blocked else None)
        write_json(tdir / "manifest.json", manifest)
        self.catalog.put_title(
            TitleRecord(
                title_id=title_id,
                source_uri=manifest["source"]["uri"],
                source_bytes=manifest["source"]["bytes"],
                source_sha256=manifest["source"]["sha256"],
                status=status,
                reason=reason,
                prism_version=__version__,
                updated_at=now_iso(),
            )
        )
        return TitleOutcome(title_id, str(source), status, reason, outcomes, tdir)


def _require_writable(out_dir: Path) -> None:
    """Fail before any work when the output directory cannot be written (exit 2 in the CLI)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"output directory {out_dir}: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise StorageError(f"output directory {out_dir} is not writable")


def _check_source(source: Path) -> None:
    """A directory or an unreadable file is a bad input of its own title, with the cause named."""
    if source.is_dir():
        raise MediaError(source, "is a directory, not a media file")
    if source.exists():
        try:
            with open(source, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise MediaError(source, f"cannot read the file ({exc.strerror or exc})") from exc


def _display(uri: str) -> str:
    """A local source's path as the operator typed it, not as a file:// URI."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a == b or a.resolve() == b.resolve()
    except OSError:
        return False


def _ancestors(name: str, known: dict[str, type[Stage]]) -> set[str]:
    """Every stage ``name`` requires, directly or not."""
    seen: set[str] = set()
    pending = list(known[name].requires)
    while pending:
        dep = pending.pop()
        if dep not in seen and dep in known:
            seen.add(dep)
            pending.extend(known[dep].requires)
    return seen


def _probe_facts(info: MediaInfo) -> dict[str, Any]:
    facts = info.to_dict()
    facts.pop("path", None)
    return facts
