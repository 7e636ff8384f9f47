"""``record_failure``: a Batch job (one group of stages) or finalize failed; store what and why.

The worker records each stage it runs, with its own precise reason when a stage fails on bad
input, and then exits 1: those records (newer than the execution's start) are kept, and stages
of the job it left alone were up to date. Batch-level failures (timeouts, spot reclaims past the
retry budget, image pull errors, bad configuration) end the job before it recorded anything, so
its stages of this run are recorded as failed with the reason from the Batch job description
Step Functions passes in ``error``. A failed job ends its chain, so the stages of this run in
the jobs after it are recorded ``blocked`` by the failed stages (``blocked_reason``),
as ``prism run`` does locally.
"""

from __future__ import annotations

import json
from typing import Any

from _shared import TITLE_FAILED, Aws, Settings, jobs_after, put_title_event, upstream_of
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from prism import __version__
from prism.artifacts import StageEntry, blocked_reason, is_blocked, now_iso
from prism.catalog import StageRecord, TitleRecord

# EXIT_FAILED / EXIT_INFRA: the worker ran and recorded its stages, and one of them failed (on the input / the host)
from prism.contract import EXIT_FAILED, EXIT_INFRA, Status, bounded

logger = Logger(service="prism-record-failure")


class TaskError(BaseModel):
    Error: str = "States.TaskFailed"
    Cause: str | None = None


class FailureEvent(BaseModel):
    title_id: str = Field(min_length=1)
    job: str = Field(min_length=1)  # a Batch job's name (cdk/config.py JobSpec), or "finalize"
    stages: list[str] = Field(default_factory=list)  # the stages this run asked for; [] = all of the job's
    source_uri: str = ""
    error: TaskError
    execution_started_at: str = ""
    final: bool = False  # finalize itself failed: nothing else will emit the title's event


@logger.inject_lambda_context(log_event=True)
@event_parser(model=FailureEvent)
def handler(event: FailureEvent, context: LambdaContext) -> dict:
    settings = Settings.from_env()
    aws = Aws(settings)
    catalog = aws.catalog
    cause, exit_code = _batch_job(event.error)
    since = _iso(event.execution_started_at)
    own = catalog.job_failure(event.title_id, event.job) if event.job in settings.jobs else None
    if own and (own.get("at") or "") >= since and own.get("reason"):
        cause = f"{own['reason']} ({cause})"  # the worker's own words, then what Batch saw
    failed: dict[str, str] = {}  # stage -> reason, in job order
    if event.final or event.job not in settings.jobs:
        reason = bounded(f"{event.title_id}: {event.job} failed: {cause}")
    else:
        ours = [s for s in settings.jobs[event.job]["stages"] if not event.stages or s in event.stages]
        previous = {s: catalog.get_stage(event.title_id, s) for s in ours}
        fresh = {s for s, r in previous.items() if r is not None and (r.finished_at or "") >= since}
        worker_recorded = exit_code in (EXIT_FAILED, EXIT_INFRA) and bool(fresh)
        for stage in ours:
            record = previous[stage]
            if stage in fresh:
                if record.status == Status.FAILED or is_blocked({"status": record.status, "reason": record.reason}):
                    failed[stage] = record.reason or f"stage {stage} {record.status}"
                    if exit_code != EXIT_FAILED:  # the host failed it (Batch's retries spent): a later run may retry
                        catalog.mark_stage(event.title_id, stage, retryable=True)
            elif not worker_recorded:
                failed[stage] = bounded(f"{event.title_id}: stage {stage} failed: job {event.job}: {cause}")
                catalog.put_stage(_record(event.title_id, stage, Status.FAILED.value, failed[stage], record),
                                  extra={"retryable": True})  # timeouts, Spot reclaims, config: not the input  # fmt: skip
        reason = bounded(next(iter(failed.values()), f"{event.title_id}: job {event.job} failed: {cause}"))
        blockers = set(failed) or set(ours)  # the job failed yet no stage says so: blame all of it
        for job in jobs_after(event.job, settings.jobs):
            for stage in settings.jobs[job]["stages"]:
                if event.stages and stage not in event.stages:
                    continue
                needs = upstream_of(stage, settings.stage_graph) & blockers
                why = blocked_reason([s for s in ours if s in (needs or blockers)])
                catalog.put_stage(
                    _record(event.title_id, stage, Status.BLOCKED.value, why, catalog.get_stage(event.title_id, stage))
                )

    known = catalog.get_title(event.title_id)
    catalog.put_title(
        TitleRecord(
            title_id=event.title_id, source_uri=known.source_uri if known else event.source_uri,
            source_bytes=known.source_bytes if known else None, source_sha256=known.source_sha256 if known else None,
            status="failed", reason=reason, prism_version=known.prism_version if known else __version__,
            updated_at=now_iso(),
        ),
        extra={"retryable": True} if event.final else None,  # finalize failed: not the input's fault
    )  # fmt: skip
    if event.final:
        detail = {"title_id": event.title_id, "status": "failed", "reason": reason, "stages": {}}
        put_title_event(aws, TITLE_FAILED, detail)
    logger.warning("job failed", extra={"title_id": event.title_id, "job": event.job, "failed": list(failed),
                                        "reason": reason, "cause": cause})  # fmt: skip
    return {"title_id": event.title_id, "job": event.job, "status": "failed", "reason": reason}


def _iso(value: str) -> str:
    """Step Functions gives ``...Z`` times; records use ``+00:00``: compare on the same form."""
    return value.replace("Z", "+00:00") if value else ""


def _batch_job(error: TaskError) -> tuple[str, int | None]:
    """The Batch job description's reason, and the container's exit code when it has one."""
    try:
        job: dict[str, Any] = json.loads(error.Cause or "")
    except json.JSONDecodeError:
        return f"{error.Error}: {error.Cause or 'no cause given'}", None
    if not isinstance(job, dict):
        return f"{error.Error}: {error.Cause}", None
    lower = {k.lower(): v for k, v in job.items()}
    reason = lower.get("statusreason") or ""
    container = {k.lower(): v for k, v in (lower.get("container") or {}).items()}
    detail = container.get("reason") or ""
    exit_code = container.get("exitcode")
    parts = [p for p in (reason, detail, f"exit code {exit_code}" if exit_code is not None else "") if p]
    try:
        code = int(exit_code) if exit_code is not None else None
    except (TypeError, ValueError):
        code = None
    return "; ".join(parts) or error.Error, code


def _record(title_id: str, stage: str, status: str, reason: str, previous: StageRecord | None) -> StageRecord:
    """A bare record (no files, no fingerprint): the stage did not run in this execution."""
    model = (
        {"name": previous.model_name, "version": previous.model_version} if previous and previous.model_name else None
    )
    entry = StageEntry(status, reason, model=model, params_hash=previous.params_hash if previous else None,
                       started_at=None, finished_at=now_iso(), duration_s=0.0)  # fmt: skip
    return entry.to_record(title_id, stage, previous.source_sha256 if previous else None, __version__)
