"""Run stages over titles: order them, skip what is up to date, publish atomically, record all.

This is the one place that turns a typed error into a ``failed`` status with a reason; a failed
stage or title never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prism import __version__
from prism.artifacts import (
    STAGING_DIR,
    WORK_DIR,
    StageEntry,
    blocked_reason,
    file_facts,
    is_blocked,
    listed_outputs,
    new_manifest,
    now_iso,
    remove_empty_dirs,
    title_dir,
    title_id_for,
)
from prism.catalog import Catalog, SQLiteCatalog, StageRecord, TitleRecord
from prism.contract import ENV_OVERLAP_STAGES, Status
from prism.errors import ConfigError, Interrupted, MediaError, PrismError, StorageError
from prism.media import MediaInfo, probe
from prism.media.chunks import configured_chunks
from prism.schedule import Waiter, ancestors, run_stages
from prism.stages.base import SharedMedia, Stage, StageContext, StageResult, registry, resolve_order
from prism.store import LocalStore, TitleStore

log = logging.getLogger(__name__)

INTERRUPT_SETTLE_S = 0.2  # how long a failed stage waits to learn that Ctrl-C caused it
UP_TO_DATE = "up to date: outputs exist for the same source, model and params (use --force to rerun)"


@dataclass
class StageOutcome:
    stage: str
    status: str  # a prism.contract.Status value: succeeded | failed | skipped | blocked
    reason: str | None = None
    duration_s: float = 0.0
    summary: str = ""
    outputs: list[str] = field(default_factory=list)
    reused: bool = False  # skipped because its outputs were already up to date

    @property
    def blocked(self) -> bool:
        """Not run because a stage it requires did not succeed (fails the title)."""
        return self.status == Status.BLOCKED


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


SourceIdentity = tuple[int, int, int, int, int]
RACY_S = 2.0  # a file changed this recently may change again within one timestamp tick: its hash is not cached


def source_identity(path: Path) -> SourceIdentity:
    """What changes whenever a file's content can have changed: device, inode, size, mtime and ctime.

    ``cp -p``, ``rsync -a`` and ``touch -d`` put an old mtime back but cannot set the ctime, and
    ``rsync`` (without ``--inplace``) writes a new inode.
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_file(path: Path, catalog: Catalog | SQLiteCatalog | None = None) -> str:
    """Content hash of the source, cached in the catalog by path and :func:`source_identity`.

    The cache is trusted only while device, inode, size, mtime and ctime are all unchanged, and
    a hash is stored only when the file did not change while it was read and its last change
    is at least ``RACY_S`` old (so an edit in the same timestamp tick cannot go unseen).
    """
    try:
        before = source_identity(path)
    except OSError as exc:
        raise MediaError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if not hasattr(catalog, "cached_hash"):
        catalog = None
    key = path.resolve()
    if catalog is not None and (cached := catalog.cached_hash(key, before)):
        return cached
    started_ns = time.time_ns()
    try:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        after = source_identity(path)
    except OSError as exc:
        raise MediaError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if after != before:
        raise MediaError(path, "changed while it was being hashed (size, mtime, ctime or inode differ); run it again")
    if catalog is not None and started_ns - before[4] >= RACY_S * 1e9:
        catalog.store_hash(key, before, digest)  # type: ignore[attr-defined]
    return digest


def fingerprint(source_sha256: str | None, stage: Stage, upstream: list[str]) -> str:
    model = stage.model()
    return _fingerprint(source_sha256, stage.name, model.name, model.version, stage.params_hash(), upstream)


def _fingerprint(
    source_sha256: str | None,
    name: str,
    model_name: str | None,
    model_version: str | None,
    params_hash: str | None,
    upstream: Sequence[str | None],
) -> str:
    blob = json.dumps([source_sha256, name, model_name, model_version, params_hash, upstream])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _follows_from_inputs(manifest: dict[str, Any], name: str, entry: dict[str, Any]) -> bool:
    """Whether a recorded stage's fingerprint is the one its recorded model and params give with the
    manifest's source and its required stages as recorded now (a stage this install does not know
    is taken as recorded)."""
    cls = registry().get(name)
    if cls is None:
        return True
    deps = [manifest["stages"].get(dep) or {} for dep in cls.requires]
    if any(dep.get("status") != Status.SUCCEEDED for dep in deps):
        return False
    model = entry.get("model") or {}
    expected = _fingerprint(
        manifest["source"].get("sha256"), name, model.get("name"), model.get("version"), entry.get("params_hash"),
        [dep.get("fingerprint") for dep in deps],
    )  # fmt: skip
    return expected == entry.get("fingerprint")


OVERLAP_VALUES = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def overlap_setting() -> bool:
    """``$PRISM_OVERLAP_STAGES`` (default on); ConfigError naming it for a value that is not a switch."""
    raw = os.environ.get(ENV_OVERLAP_STAGES, "").strip().lower()
    if not raw:
        return True
    if raw not in OVERLAP_VALUES:
        raise ConfigError(f"{ENV_OVERLAP_STAGES}={raw!r}: expected 1 or 0 (true/false, yes/no, on/off)")
    return OVERLAP_VALUES[raw]


class Runner:
    """Processes titles into a :class:`~prism.store.TitleStore` (by default ``<out_dir>/titles/<title_id>/``
    and the catalog) and decides, in one place, what runs: the up-to-date rule, ``--force``, the
    recorded dependents a rerun stage drags along, and stages blocked by a failed requirement.

    The store makes a title's writes safe: locally one process writes a title at a time (a file
    lock per title) and every change of a stage's files is journaled first, so a run killed at any
    point is repaired by the next one (see :class:`~prism.store.LocalStore`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        catalog: Catalog | None = None,
        params: dict[str, dict[str, Any]] | None = None,
        force: bool = False,
        events: RunEvents | None = None,
        overlap: bool | None = None,
    ):
        """``overlap``: run stage concurrency groups side by side (prism/schedule.py); default
        ``$PRISM_OVERLAP_STAGES`` (0 turns it off), else on."""
        self.out_dir = Path(out_dir)
        if catalog is None:
            _require_writable(self.out_dir)
            catalog = SQLiteCatalog(self.out_dir / "catalog.sqlite")
        self.catalog = catalog
        self.params = params or {}
        self.force = force
        self.events = events or _NoEvents()
        if overlap is None:
            overlap = overlap_setting()
        self.overlap = overlap
        self._stages: dict[str, Stage] = {}
        self._commit_lock = threading.RLock()  # one title's stages may finish in two threads at once
        self._cancel = threading.Event()  # set on Ctrl-C: running stages stop at their next progress report
        self._abandoned = False  # after Ctrl-C: this runner records nothing more

    def store(self, title_id: str) -> TitleStore:
        """The default store of a title: ``<out_dir>/titles/<title_id>/`` and the catalog."""
        return LocalStore(self.out_dir, title_id, self.catalog)

    def run(self, sources: list[str | Path], stages: list[str] | None = None) -> list[TitleOutcome]:
        """Process each source in turn; configuration errors raise ConfigError before any work.

        A title that fails, whatever the cause (bad input, a full disk, an id another source
        holds), fails alone: the batch goes on.
        """
        order = resolve_order(stages)
        self.check_config(order)
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

    def check_config(self, order: list[str]) -> None:
        """Raise ConfigError naming the setting, before any title is touched, when the parameters, the
        environment (``$PRISM_DECODE_CHUNKS``, ``$PRISM_OVERLAP_STAGES``) or a stage's model location
        cannot work: a typo must not fail (and rewrite) every title of the batch instead."""
        configured_chunks()
        overlap_setting()
        for stage in self.build_stages(order).values():
            stage.check_config()

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
        self._note_title_failure(self.store(title_id), source, reason)
        return self._unrecorded(title_id, source, order, reason)

    def run_title(
        self,
        source: Path,
        order: list[str],
        title_id: str | None = None,
        *,
        source_facts: dict[str, Any] | None = None,
        upstream: dict[str, str] | None = None,
        store: TitleStore | None = None,
    ) -> TitleOutcome:
        """Run ``order`` for one title.

        ``source_facts`` (uri, etag, sha256) describe where the local ``source`` copy came from,
        e.g. an S3 object, so the hash is not recomputed. A stage ``order`` requires but does not
        list counts with its recorded result (``upstream`` may give fingerprints instead), so
        ``order`` can be the stages of one Batch job. Stages the title already has that depend on
        a stage of ``order`` (or every recorded stage, when the source's content changed) are
        brought up to date too (or, where the store runs no dependents, recorded ``stale``), so no
        stage is left ``succeeded`` on inputs that have since changed.
        """
        title_id = title_id or title_id_for(source)
        store = store or self.store(title_id)
        with store.lock():
            return self._run_title(source, order, title_id, source_facts or {}, upstream or {}, store)

    def current(self, store: TitleStore, order: list[str], source_sha256: str) -> list[StageOutcome] | None:
        """Every stage of ``order`` reused as recorded, or None if one must run; decided without the source.

        The Batch worker asks before downloading a video: a retried or duplicated job is a no-op.
        """
        with store.lock():
            manifest = store.load()
        if manifest is None or (self.force and order):
            return None
        stages = self.build_stages(order)
        fingerprints = self._recorded_upstream(order, manifest)
        outcomes = []
        for name in order:
            stage = stages[name]
            if any(dep not in fingerprints for dep in stage.requires):
                return None
            fp = fingerprint(source_sha256, stage, [fingerprints[dep] for dep in stage.requires])
            entry = manifest["stages"].get(name)
            if not self._reusable(store, entry, fp, forced=True):
                return None
            fingerprints[name] = fp
            outcomes.append(StageOutcome(name, "skipped", UP_TO_DATE, 0.0, "", list(entry["outputs"]), reused=True))
        return outcomes

    def _run_title(
        self,
        source: Path,
        order: list[str],
        title_id: str,
        given: dict[str, Any],
        upstream: dict[str, str],
        store: TitleStore,
    ) -> TitleOutcome:
        tdir = store.title_dir
        existing = store.load()
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
            identity = source_identity(source) if source.exists() else None
            info = probe(source)
            source_facts.update(
                bytes=info.size_bytes,
                sha256=source_facts["sha256"] or sha256_file(source, self.catalog),
                probe=_probe_facts(info),
            )
            _check_unchanged(source, identity)
        except MediaError as exc:
            if (
                store.owns_manifest
                and existing
                and any(e.get("status") == "succeeded" for e in existing["stages"].values())
            ):
                # earlier results of this id are kept: they match the source they were made from (in the
                # cloud each stage record stands alone: the job records its stages failed, with the reason)
                if owner and owner.get("uri") == source_facts["uri"]:
                    self._note_title_failure(store, source, str(exc))
                return self._unrecorded(title_id, source, order, str(exc))
            if source.exists():
                source_facts["bytes"] = source.stat().st_size
            manifest = existing or new_manifest(title_id, source_facts, __version__)
            manifest["source"] = source_facts
            outcomes = [self._record_failure(store, manifest, name, str(exc), None) for name in order]
            return self._finish_title(store, source, manifest, outcomes)
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
        stages, forced, dependents = self._plan(order, manifest, changed, upstream, store)
        run_dir = self.out_dir / WORK_DIR / title_id / uuid.uuid4().hex[:8]
        # stages side by side (prism/schedule.py) decode on their own; one after another, a stage may
        # keep its decode for a later one (the cues stage's audio for the audio stage)
        overlapping = self.overlap and len({stage.concurrency for stage in stages.values()}) > 1
        shared = SharedMedia(run_dir, planned=None if overlapping else list(stages))
        fingerprints: dict[str, str] = {**self._recorded_upstream(list(stages), manifest), **upstream}

        def run_one(stage: Stage, waiter: Waiter) -> StageOutcome:
            return self._run_stage(
                title_id, source, info, store, manifest, shared, stage, fingerprints, stage.name in forced, waiter,
                identity=identity,
            )  # fmt: skip

        try:
            outcomes = run_stages(stages, run_one, overlap=self.overlap, cancel=self._cancel)
        except KeyboardInterrupt:
            self._cancel.set()
            with self._commit_lock:  # waits for a commit under way; a stage still running never commits now
                self._abandoned = True
            raise
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            remove_empty_dirs(run_dir.parent, run_dir.parent.parent)
            shutil.rmtree(tdir / STAGING_DIR, ignore_errors=True)
        self._invalidate(store, manifest, dependents, fingerprints)
        return self._finish_title(store, source, manifest, outcomes)

    def _plan(
        self, order: list[str], manifest: dict[str, Any], changed: bool, upstream: dict[str, str], store: TitleStore
    ) -> tuple[dict[str, Stage], set[str], dict[str, Stage]]:
        """The stages to run for this title, those ``--force`` applies to (the requested ones), and the
        recorded dependents the store does not run here (to be checked for staleness instead).

        Recorded stages downstream of a requested one join the run (with the shaping params
        they were made with, unless given now): each reruns if its inputs changed, and is
        reused if not.
        """
        known = registry()
        recorded = [name for name in manifest["stages"] if name in known and name not in order and name not in upstream]
        requested = set(order)
        extra = [name for name in recorded if changed or ancestors(name, known) & requested]
        stages = {name: self.build_stages([name])[name] for name in order}
        if not extra:
            return stages, requested, {}
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
        if not store.runs_dependents:  # another job runs them: they are checked, not run, here
            dependents = {name: stage for name, stage in result.items() if name in extra}
            return stages, requested, dependents
        log.info("%s also run to keep them consistent with %s", [n for n in full if n not in stages], order)
        return result, requested, {}

    @staticmethod
    def _recorded_upstream(order: list[str], manifest: dict[str, Any]) -> dict[str, str]:
        """Fingerprints of the succeeded recorded stages that ``order`` requires but does not run."""
        known = registry()
        needed = {dep for name in order if name in known for dep in known[name].requires if dep not in order}
        found = {}
        for dep in sorted(needed):
            entry = manifest["stages"].get(dep) or {}
            if entry.get("status") == "succeeded" and entry.get("fingerprint"):
                found[dep] = entry["fingerprint"]
        return found

    def _reusable(self, store: TitleStore, entry: dict[str, Any] | None, fp: str | None, forced: bool) -> bool:
        """The up-to-date rule: succeeded before with the same fingerprint (source, model, params,
        upstream), its files still stored as recorded, and not forced."""
        return (
            not (self.force and forced)
            and entry is not None
            and entry.get("status") == "succeeded"
            and entry.get("fingerprint") == fp
            and store.outputs_intact(entry)
        )

    def _sweep_work(self) -> None:
        """Remove scratch decodes that killed runs left in ``<out>/.work/`` for titles nobody is writing."""
        work = self.out_dir / WORK_DIR
        if not work.is_dir():
            return
        for entry in sorted(work.iterdir()):
            with self.store(entry.name).lock(wait=False) as held:
                if held:
                    log.info("removing %s left by an interrupted run", entry)
                    shutil.rmtree(entry, ignore_errors=True)
        remove_empty_dirs(work, self.out_dir)

    def _run_stage(
        self,
        title_id: str,
        source: Path,
        info: MediaInfo,
        store: TitleStore,
        manifest: dict[str, Any],
        shared: SharedMedia,
        stage: Stage,
        fingerprints: dict[str, str],
        forced: bool,
        waiter: Waiter | None = None,
        *,
        identity: SourceIdentity | None = None,
    ) -> StageOutcome:
        """``identity``: the source's as it was hashed; a stage that finds it changed fails (its results
        would be recorded under the hash of other content)."""
        name = stage.name
        blocked = [dep for dep in stage.requires if dep not in fingerprints]
        skipped = [manifest["stages"].get(dep) or {} for dep in blocked]
        if blocked and all(e.get("status") == Status.SKIPPED and not is_blocked(e) for e in skipped):
            # what it needs was skipped for a fact of the title (no video stream): so is this stage
            reason = f"{', '.join(blocked)} skipped: {skipped[0].get('reason')}"
            return self._record(store, manifest, stage, Status.SKIPPED.value, reason, None, [], {}, None, None, 0.0)
        if blocked:
            reason = blocked_reason(blocked)
            return self._record(store, manifest, stage, Status.BLOCKED.value, reason, None, [], {}, None, None, 0.0)
        try:
            fp = fingerprint(manifest["source"]["sha256"], stage, [fingerprints[d] for d in stage.requires])
        except Exception as exc:  # model() could not say what it is: the stage cannot run
            log.exception("stage %s: model identity failed", name)
            return self._record_failure(
                store, manifest, name, f"{source}: stage {name}: {type(exc).__name__}: {exc}", None
            )
        entry = manifest["stages"].get(name)
        if self._reusable(store, entry, fp, forced):
            fingerprints[name] = fp
            self._sync_catalog(store, manifest, stage, entry)
            outcome = StageOutcome(name, "skipped", UP_TO_DATE, 0.0, "", list(entry["outputs"]), reused=True)
            self.events.stage_finished(title_id, outcome)
            return outcome

        for dep in stage.requires:  # inputs recorded elsewhere (another job's stage) are brought here first
            store.fetch(manifest["stages"].get(dep) or {})
        self.events.stage_started(title_id, name)
        staging = store.title_dir / STAGING_DIR / f"{name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        ctx = StageContext(
            title_id=title_id,
            source=source,
            info=info,
            title_dir=store.title_dir,
            staging=staging,
            shared=shared,
            progress=lambda done, total, label: self._progress(title_id, name, done, total, label),
            wait_for=waiter.wait_for if waiter else None,
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
        # Ctrl-C in a terminal also kills the stage's ffmpeg, whose failure can reach here just before
        # the interrupt reaches the main thread: a failure waits that long for it (and, in the main
        # thread, the interrupt is raised in this wait)
        if (result is None or result.status != "succeeded") and self._cancel.wait(INTERRUPT_SETTLE_S):
            # a stage stopped by Ctrl-C is not a failure of the title: its previous record and files stay
            shutil.rmtree(staging, ignore_errors=True)
            raise Interrupted()
        decodes = {k: v for k, v in dict(shared.decode_seconds).items() if k not in decoded_before}
        if result is not None and decodes:  # the shared decode this stage triggered, reported apart
            result.metrics["shared_decode_s"] = {k: round(v, 3) for k, v in decodes.items()}
        if result is not None and result.status == "succeeded":
            try:
                _check_unchanged(source, identity)
            except MediaError as exc:
                reason, result = str(exc), None
                log.warning("%s", reason)
        try:
            if result is None:
                return self._record(store, manifest, stage, "failed", reason, fp, [], {}, started, None, elapsed)
            if result.status != "succeeded":
                return self._record(
                    store,
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
                return self._record(store, manifest, stage, "failed", reason, fp, [], {}, started, None, elapsed)
            outcome = self._record(
                store, manifest, stage, "succeeded", None, fp, result.outputs, result.metrics, started,
                result.summary, elapsed, staging=staging, files=files,
            )  # fmt: skip
            if outcome.status == "succeeded":
                fingerprints[name] = fp
            return outcome
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _progress(self, title_id: str, stage: str, done: int, total: int | None, label: str) -> None:
        """A stage's progress report, and where it stops after Ctrl-C."""
        if self._cancel.is_set():
            raise Interrupted()
        self.events.stage_progress(title_id, stage, done, total, label)

    def _record(
        self,
        store: TitleStore,
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
        entry = StageEntry(
            status=status,
            reason=reason,
            model=stage.model().to_dict(),
            params=stage.params_dict(),
            params_hash=stage.params_hash(),
            fingerprint=fp,
            outputs=outputs,
            files=files or {},
            started_at=started,
            duration_s=round(elapsed, 3),
            metrics=metrics,
        )
        entry = self._commit(store, manifest, stage.name, entry, staging)
        outcome = StageOutcome(
            stage.name, entry.status, entry.reason, elapsed, (summary or "") if entry.status == "succeeded" else "",
            entry.outputs,
        )  # fmt: skip
        self.events.stage_finished(store.title_id, outcome)
        return outcome

    def _record_failure(
        self, store: TitleStore, manifest: dict[str, Any], name: str, reason: str, fp: str | None
    ) -> StageOutcome:
        """Failure before a stage object exists (bad source, bad params)."""
        entry = StageEntry(Status.FAILED.value, reason, params=self.params.get(name, {}), fingerprint=fp)
        self._commit(store, manifest, name, entry, None)
        outcome = StageOutcome(name, "failed", reason)
        self.events.stage_finished(store.title_id, outcome)
        return outcome

    def _commit(
        self, store: TitleStore, manifest: dict[str, Any], name: str, entry: StageEntry, staging: Path | None
    ) -> StageEntry:
        """Replace a stage's files and its manifest entry and catalog record, recoverably.

        Order: journal every file this changes -> move the new files in -> catalog records of the
        stages this makes stale -> manifest -> catalog -> delete the files no entry lists any more
        -> drop the journal. Killed anywhere in between, the next run's ``store.load`` deletes
        unlisted journaled files, and a listed file that was overwritten no longer matches its
        recorded hash, so its stage reruns.

        Where the store owns the manifest, a stage that failed or is blocked leaves the results it
        published before (files, manifest entry, catalog record) as they were, until a run of it
        succeeds: the returned entry says why it failed, and so does the title's record. And the
        manifest write that records this stage also records ``stale`` every succeeded stage that
        no longer follows from the source and its inputs (a re-delivered source's new shots make
        the old keyframes stale), so no instant on disk shows a success made from other inputs.
        """
        with self._commit_lock:  # the manifest and the journal are shared by the title's stage threads
            if self._abandoned:
                raise Interrupted()
            previous = manifest["stages"].get(name) or {}
            old = set(previous.get("outputs", []))
            touched = old | set(entry.outputs)
            with store.publishing(name, touched):
                if staging is not None and entry.outputs:
                    try:
                        store.publish(staging, entry.outputs)
                    except OSError as exc:
                        entry.status, entry.reason = (
                            Status.FAILED.value,
                            f"stage {name}: cannot publish its outputs: {exc}",
                        )
                        entry.outputs, entry.files = [], {}
                        log.warning("%s: %s", store.title_id, entry.reason)
                entry.finished_at = now_iso()
                # (in the cloud each stage record stands alone and must say it failed: S3Store.remove keeps
                # the objects of a failed rerun, and finalize's manifest says what is current)
                keep = (
                    store.owns_manifest
                    and entry.status in (Status.FAILED, Status.BLOCKED)  # not a skip: a fact about the title
                    and bool(previous.get("outputs"))
                    and store.outputs_intact(previous)  # damaged or partly overwritten ones are not worth keeping
                )
                if keep:
                    log.info("%s: stage %s %s; its earlier results are kept", store.title_id, name, entry.status)
                else:
                    manifest["stages"][name] = entry.to_manifest()
                manifest["updated_at"] = entry.finished_at
                if store.owns_manifest:
                    self._mark_stale(store, manifest)
                kept = manifest["stages"][name]
                record = (
                    _record_from_entry(store.title_id, manifest, name, kept, kept["status"])
                    if keep
                    else entry.to_record(store.title_id, name, manifest["source"]["sha256"], __version__)
                )
                store.record(manifest, name, record)
                store.remove(touched - listed_outputs(manifest), replaced=entry.status == Status.SUCCEEDED)
            return entry

    def _mark_stale(self, store: TitleStore, manifest: dict[str, Any]) -> None:
        """Mark ``stale`` in ``manifest`` every succeeded stage that does not follow from its inputs as
        recorded now; their catalog records are written first (the manifest is written by the caller),
        so a kill in between leaves the catalog more cautious than the manifest, never less."""
        while found := [
            n for n, e in manifest["stages"].items()
            if e.get("status") == Status.SUCCEEDED and not _follows_from_inputs(manifest, n, e)
        ]:  # fmt: skip
            for name in found:
                entry = manifest["stages"][name]
                stale = {**entry, "status": Status.STALE.value, "finished_at": now_iso(),
                         "reason": f"the source or a stage it requires changed since it ran; run {name} again"}  # fmt: skip
                manifest["stages"][name] = stale
                store.sync(
                    manifest, name, _record_from_entry(store.title_id, manifest, name, stale, Status.STALE.value)
                )
                log.info("%s/%s recorded stale: %s", store.title_id, name, stale["reason"])

    def _sync_catalog(self, store: TitleStore, manifest: dict[str, Any], stage: Stage, entry: dict[str, Any]) -> None:
        """A reused stage's catalog record is rewritten from the manifest if a kill left it behind."""
        with self._commit_lock:
            store.sync(
                manifest, stage.name, _record_from_entry(store.title_id, manifest, stage.name, entry, "succeeded")
            )

    def _invalidate(
        self, store: TitleStore, manifest: dict[str, Any], dependents: dict[str, Stage], fingerprints: dict[str, str]
    ) -> None:
        """Record ``stale`` the dependents this run did not bring up to date (their store runs them in
        another job): each whose fingerprint, with its inputs as they are now, is not the recorded one."""
        sha = manifest["source"]["sha256"]
        for name, stage in dependents.items():
            entry = manifest["stages"].get(name) or {}
            if entry.get("status") != "succeeded":
                continue
            deps = [fingerprints.get(d) or _succeeded_fingerprint(manifest, d) for d in stage.requires]
            try:
                expected = fingerprint(sha, stage, [d for d in deps if d]) if all(deps) else None
            except Exception:  # model() could not say what it is: its record cannot be trusted either
                log.exception("stage %s: model identity failed", name)
                expected = None
            if expected is not None and expected == entry.get("fingerprint"):
                continue
            changed = [d for d in stage.requires if fingerprints.get(d) or not _succeeded_fingerprint(manifest, d)]
            seen = entry.get("fingerprint")
            stale = {**entry, "status": Status.STALE.value, "finished_at": now_iso(),
                     "reason": f"stage(s) {changed or stage.requires} it requires changed since it ran; run {name} again"}  # fmt: skip
            manifest["stages"][name] = stale
            record = _record_from_entry(store.title_id, manifest, name, stale, Status.STALE.value)
            if store.mark_stale(manifest, name, record, seen):
                log.info("%s/%s recorded stale: %s", store.title_id, name, stale["reason"])
            else:  # another job of the title rewrote it meanwhile: its record stands
                manifest["stages"][name] = entry

    def _note_title_failure(self, store: TitleStore, source: Path, reason: str) -> None:
        """Best effort: mark the title failed in the catalog, unless the id belongs to another source."""
        uri = source.resolve().as_uri() if source.is_absolute() or source.exists() else str(source)
        store.note_title_failure(
            TitleRecord(
                title_id=store.title_id,
                source_uri=uri,
                source_bytes=None,
                source_sha256=None,
                status="failed",
                reason=reason,
                prism_version=__version__,
                updated_at=now_iso(),
            )
        )

    def _unrecorded(self, title_id: str, source: Path, order: list[str], reason: str) -> TitleOutcome:
        """A failed title whose id's manifest is left as it is (it may belong to another source)."""
        outcomes = [StageOutcome(name, "failed", reason) for name in order]
        return TitleOutcome(title_id, str(source), "failed", reason, outcomes, title_dir(self.out_dir, title_id), False)

    def _finish_title(
        self, store: TitleStore, source: Path, manifest: dict[str, Any], outcomes: list[StageOutcome]
    ) -> TitleOutcome:
        failed = [o for o in outcomes if o.status == "failed"]
        blocked = [o for o in outcomes if o.blocked]
        status = "failed" if failed or blocked else "succeeded"
        reason = failed[0].reason if failed else (blocked[0].reason if blocked else None)
        store.finish(
            manifest,
            TitleRecord(
                title_id=store.title_id,
                source_uri=manifest["source"]["uri"],
                source_bytes=manifest["source"]["bytes"],
                source_sha256=manifest["source"]["sha256"],
                status=status,
                reason=reason,
                prism_version=__version__,
                updated_at=now_iso(),
            ),
        )
        return TitleOutcome(store.title_id, str(source), status, reason, outcomes, store.title_dir)


def _succeeded_fingerprint(manifest: dict[str, Any], name: str) -> str | None:
    entry = manifest["stages"].get(name) or {}
    return entry.get("fingerprint") if entry.get("status") == "succeeded" else None


def _record_from_entry(
    title_id: str, manifest: dict[str, Any], name: str, entry: dict[str, Any], status: str
) -> StageRecord:
    """The catalog record a manifest entry stands for."""
    record = StageEntry.from_manifest(entry).to_record(
        title_id, name, manifest["source"]["sha256"], manifest.get("prism_version", __version__)
    )
    record.status = status
    return record


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


def _check_unchanged(source: Path, identity: SourceIdentity | None) -> None:
    """Raise MediaError when ``source`` is no longer the file that was hashed (replaced or edited since)."""
    if identity is None:
        return
    try:
        now = source_identity(source)
    except OSError:
        now = None
    if now != identity:
        raise MediaError(
            source,
            "the file changed while it was being processed (size, mtime, ctime or inode differ from when it "
            "was hashed); run it again once it is complete",
        )


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


def _probe_facts(info: MediaInfo) -> dict[str, Any]:
    facts = info.to_dict()
    facts.pop("path", None)
    return facts
