"""Run stages over titles: order them, skip what is up to date, publish atomically, record all.

This is the one place that turns a typed error into a ``failed`` status with a reason; a failed
stage or title never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prism import __version__
from prism.artifacts import (
    STAGING_DIR,
    blocked_reason,
    new_manifest,
    now_iso,
    publish,
    read_manifest,
    title_dir,
    title_id_for,
    write_json,
)
from prism.catalog import Catalog, SQLiteCatalog, StageRecord, TitleRecord
from prism.errors import ConfigError, MediaError, PrismError
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
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if catalog is not None:
        catalog.store_hash(path.resolve(), stat.st_size, stat.st_mtime_ns, digest)
    return digest


def fingerprint(source_sha256: str | None, stage: Stage, upstream: list[str]) -> str:
    model = stage.model()
    blob = json.dumps([source_sha256, stage.name, model.name, model.version, stage.params_hash(), upstream])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Runner:
    """Processes titles into ``<out_dir>/titles/<title_id>/`` and records them in the catalog."""

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
        self.catalog = catalog or SQLiteCatalog(self.out_dir / "catalog.sqlite")
        self.params = params or {}
        self.force = force
        self.events = events or _NoEvents()
        self._stages: dict[str, Stage] = {}

    def run(self, sources: list[str | Path], stages: list[str] | None = None) -> list[TitleOutcome]:
        """Process each source in turn; configuration errors raise ConfigError before any work."""
        order = resolve_order(stages)
        self.build_stages(order)
        return [self.run_title(Path(src), order) for src in sources]

    def build_stages(self, order: list[str]) -> dict[str, Stage]:
        """Instantiate (and so validate) every stage's parameters once."""
        stray = sorted(set(self.params) - set(registry()))
        if stray:
            raise ConfigError(f"parameters given for unknown stage(s) {stray}")
        missing = [name for name in order if name not in self._stages]
        for name in missing:
            self._stages[name] = registry()[name](self.params.get(name))
        return self._stages

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
        """
        title_id = title_id or title_id_for(source)
        given = source_facts or {}
        tdir = title_dir(self.out_dir, title_id)
        tdir.mkdir(parents=True, exist_ok=True)
        source_facts: dict[str, Any] = {
            "uri": source.resolve().as_uri() if source.is_absolute() or source.exists() else str(source),
            "bytes": None,
            "sha256": None,
            "etag": None,
            "probe": None,
        }
        source_facts.update({k: v for k, v in given.items() if k in ("uri", "etag", "sha256")})
        manifest = read_manifest(tdir) or new_manifest(title_id, source_facts, __version__)
        manifest["prism_version"] = __version__
        try:
            info = probe(source)
            source_facts.update(
                bytes=info.size_bytes,
                sha256=source_facts["sha256"] or sha256_file(source, self.catalog),
                probe=_probe_facts(info),
            )
        except MediaError as exc:
            if source.exists():
                source_facts["bytes"] = source.stat().st_size
            manifest["source"] = source_facts
            outcomes = [self._record_failure(title_id, manifest, name, str(exc), None) for name in order]
            return self._finish_title(title_id, source, tdir, manifest, outcomes)
        manifest["source"] = source_facts
        shared = SharedMedia(self.out_dir / ".work" / f"{title_id}-{uuid.uuid4().hex[:6]}")
        outcomes: list[StageOutcome] = []
        fingerprints: dict[str, str] = dict(upstream or {})
        try:
            for name in order:
                outcome = self._run_stage(title_id, source, info, tdir, manifest, shared, name, fingerprints)
                outcomes.append(outcome)
        finally:
            shutil.rmtree(shared.work_dir, ignore_errors=True)
            shutil.rmtree(tdir / STAGING_DIR, ignore_errors=True)
        return self._finish_title(title_id, source, tdir, manifest, outcomes)

    def _run_stage(
        self,
        title_id: str,
        source: Path,
        info: MediaInfo,
        tdir: Path,
        manifest: dict[str, Any],
        shared: SharedMedia,
        name: str,
        fingerprints: dict[str, str],
    ) -> StageOutcome:
        stage = self.build_stages([name])[name]
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
            return self._record_failure(title_id, manifest, name, f"{source}: stage {name}: {type(exc).__name__}: {exc}", None)
        previous = self.catalog.get_stage(title_id, name)
        if (
            not self.force
            and previous is not None
            and previous.status == "succeeded"
            and previous.fingerprint == fp
            and name in manifest["stages"]
            and all((tdir / rel).exists() for rel in previous.outputs)
        ):
            fingerprints[name] = fp
            outcome = StageOutcome(name, "skipped", UP_TO_DATE, 0.0, "", previous.outputs, reused=True)
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
            result: StageResult = stage.run(ctx)
        except PrismError as exc:
            reason, result = str(exc), None
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
                    title_id, manifest, stage, result.status, result.reason, fp, [], result.metrics, started, None, elapsed
                )
            old_outputs = set(manifest["stages"].get(name, {}).get("outputs", []))
            publish(staging, tdir, result.outputs)
            outcome = self._record(
                title_id, manifest, stage, "succeeded", None, fp, result.outputs, result.metrics, started, result.summary, elapsed
            )
            for stale in old_outputs - set(result.outputs):
                (tdir / stale).unlink(missing_ok=True)
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
    ) -> StageOutcome:
        finished = now_iso()
        model = stage.model()
        manifest["stages"][stage.name] = {
            "status": status,
            "reason": reason,
            "model": model.to_dict(),
            "params": stage.params_dict(),
            "params_hash": stage.params_hash(),
            "fingerprint": fp,
            "outputs": outputs,
            "started_at": started,
            "finished_at": finished,
            "duration_s": round(elapsed, 3),
            "metrics": metrics,
        }
        manifest["updated_at"] = finished
        write_json(title_dir(self.out_dir, title_id) / "manifest.json", manifest)
        self.catalog.put_stage(
            StageRecord(
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
        )
        outcome = StageOutcome(stage.name, status, reason, elapsed, summary or "", outputs)
        self.events.stage_finished(title_id, outcome)
        return outcome

    def _record_failure(
        self, title_id: str, manifest: dict[str, Any], name: str, reason: str, fp: str | None
    ) -> StageOutcome:
        """Failure before a stage object exists (bad source, bad params)."""
        finished = now_iso()
        manifest["stages"][name] = {
            "status": "failed",
            "reason": reason,
            "model": None,
            "params": self.params.get(name, {}),
            "params_hash": None,
            "fingerprint": fp,
            "outputs": [],
            "started_at": None,
            "finished_at": finished,
            "duration_s": 0.0,
            "metrics": {},
        }
        manifest["updated_at"] = finished
        write_json(title_dir(self.out_dir, title_id) / "manifest.json", manifest)
        self.catalog.put_stage(
            StageRecord(title_id, name, "failed", reason, None, None, None, fp, manifest["source"]["sha256"],
                        None, finished, 0.0, __version__, [])
        )  # fmt: skip
        outcome = StageOutcome(name, "failed", reason)
        self.events.stage_finished(title_id, outcome)
        return outcome

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


def _probe_facts(info: MediaInfo) -> dict[str, Any]:
    facts = info.to_dict()
    facts.pop("path", None)
    return facts
