"""``summarise``: the execution's output, titles grouped by outcome (succeeded / failed / skipped / not found)."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

logger = Logger(service="prism-summarise")


class TitleResult(BaseModel):
    title_id: str
    status: str
    reason: str | None = None


class Discovery(BaseModel):
    mode: str
    skipped: list[str] = Field(default_factory=list)
    not_found: list[str] = Field(default_factory=list)


class SummaryEvent(BaseModel):
    discovery: Discovery
    results: list[TitleResult | None] = Field(default_factory=list)
    pipeline_version: str = ""


@logger.inject_lambda_context
@event_parser(model=SummaryEvent)
def handler(event: SummaryEvent, context: LambdaContext) -> dict:
    results = [r for r in event.results if r is not None]
    summary = {
        "mode": event.discovery.mode,
        "pipeline_version": event.pipeline_version,
        "succeeded": sorted(r.title_id for r in results if r.status == "succeeded"),
        "failed": sorted(({"title_id": r.title_id, "reason": r.reason} for r in results if r.status != "succeeded"),
                         key=lambda f: f["title_id"]),
        "skipped": sorted(event.discovery.skipped),
        "not_found": sorted(event.discovery.not_found),
    }  # fmt: skip
    summary["counts"] = {k: len(summary[k]) for k in ("succeeded", "failed", "skipped", "not_found")}
    logger.info("run summary", extra=summary["counts"])
    return summary
