"""``record_failure``: a stage job (or finalize) failed; store which stage and why.

The worker records its own precise reason when a stage fails on bad input; Batch-level
failures (timeouts, spot reclaims past the retry budget, image pull errors) leave no record,
so the reason then comes from the Batch job description Step Functions passes in ``error``.
Stages that required the failed one are recorded as skipped, as ``prism run`` does locally.
"""

from __future__ import annotations

import json
from typing import Any

from _shared import TITLE_FAILED, Aws, Settings, downstream_of, put_title_event
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from prism import __version__
from prism.artifacts import blocked_reason, now_iso
from prism.catalog import StageRecord, TitleRecord

logger = Logger(service="prism-record-failure")


class TaskError(BaseModel):
    Error: str = "States.TaskFailed"
    Cause: str | None = None


class FailureEvent(BaseModel):
    title_id: str = Field(min_length=1)
    stage: str = Field(min_length=1)
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
    previous = catalog.get_stage(event.title_id, event.stage)
    from_worker = (
        previous is not None
        and previous.status in ("failed", "skipped")
        and previous.reason
        and (previous.finished_at or "") >= _iso(event.execution_started_at)
    )
    if from_worker:
        reason = previous.reason
    else:
        reason = f"{event.title_id}: stage {event.stage} failed: {_batch_reason(event.error)}"
        catalog.put_stage(_record(event.title_id, event.stage, "failed", reason, previous))
    for blocked in downstream_of(event.stage, settings.stage_graph):
        why = blocked_reason([event.stage])
        catalog.put_stage(_record(event.title_id, blocked, "skipped", why, catalog.get_stage(event.title_id, blocked)))

    known = catalog.get_title(event.title_id)
    catalog.put_title(
        TitleRecord(
            title_id=event.title_id, source_uri=known.source_uri if known else event.source_uri,
            source_bytes=known.source_bytes if known else None, source_sha256=known.source_sha256 if known else None,
            status="failed", reason=reason, prism_version=known.prism_version if known else __version__,
            updated_at=now_iso(),
        )
    )  # fmt: skip
    if event.final:
        detail = {"title_id": event.title_id, "status": "failed", "reason": reason, "stages": {event.stage: "failed"}}
        put_title_event(aws, TITLE_FAILED, detail)
    logger.warning("stage failed", extra={"title_id": event.title_id, "stage": event.stage, "reason": reason})
    return {"title_id": event.title_id, "stage": event.stage, "status": "failed", "reason": reason}


def _iso(value: str) -> str:
    """Step Functions gives ``...Z`` times; records use ``+00:00``: compare on the same form."""
    return value.replace("Z", "+00:00") if value else ""


def _batch_reason(error: TaskError) -> str:
    try:
        job: dict[str, Any] = json.loads(error.Cause or "")
    except json.JSONDecodeError:
        return f"{error.Error}: {error.Cause or 'no cause given'}"
    if not isinstance(job, dict):
        return f"{error.Error}: {error.Cause}"
    lower = {k.lower(): v for k, v in job.items()}
    reason = lower.get("statusreason") or ""
    container = {k.lower(): v for k, v in (lower.get("container") or {}).items()}
    detail = container.get("reason") or ""
    exit_code = container.get("exitcode")
    parts = [p for p in (reason, detail, f"exit code {exit_code}" if exit_code is not None else "") if p]
    return "; ".join(parts) or error.Error


def _record(title_id: str, stage: str, status: str, reason: str, previous: StageRecord | None) -> StageRecord:
    return StageRecord(
        title_id=title_id, stage=stage, status=status, reason=reason,
        model_name=previous.model_name if previous else None, model_version=previous.model_version if previous else None,
        params_hash=previous.params_hash if previous else None, fingerprint=None,
        source_sha256=previous.source_sha256 if previous else None, started_at=None, finished_at=now_iso(),
        duration_s=0.0, prism_version=__version__, outputs=[],
    )  # fmt: skip
