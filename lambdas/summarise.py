"""``summarise``: the execution's output, titles grouped by outcome (succeeded / failed / skipped / not found),
plus the titles discover parked (failed on their host ``max_attempts`` runs in a row) and the count deferred.

Nothing that grows with the run travels through the state: the Distributed Map writes its
results to S3 (``ResultWriter``) and discover its skipped / not-found lists, so this reads both
from S3, writes the full summary next to them (``summary.json``) and returns counts plus the
first ``LIST_LIMIT`` titles of each group, well under Step Functions' 256 KiB payload limit.
"""

from __future__ import annotations

import json
from typing import Any

from _shared import Aws, Settings
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

logger = Logger(service="prism-summarise")

LIST_LIMIT = 100  # titles per group in the execution's output; summary.json has them all
GROUPS = ("succeeded", "failed", "skipped", "not_found")


class TitleResult(BaseModel):
    title_id: str
    status: str
    reason: str | None = None


class Discovery(BaseModel):
    mode: str
    lists_key: str = Field(min_length=1)
    count: int = 0
    deferred_count: int = 0


class ResultWriterDetails(BaseModel):
    Bucket: str
    Key: str


class MapRun(BaseModel):
    """The Distributed Map's output with a ResultWriter: where its result manifest is."""

    ResultWriterDetails: ResultWriterDetails


class SummaryEvent(BaseModel):
    discovery: Discovery
    results: MapRun | list[Any] = Field(default_factory=list)  # [] when there was nothing to do
    pipeline_version: str = ""


@logger.inject_lambda_context
@event_parser(model=SummaryEvent)
def handler(event: SummaryEvent, context: LambdaContext) -> dict:
    settings = Settings.from_env()
    aws = Aws(settings)
    lists = _read_json(aws, settings.artifacts_bucket, event.discovery.lists_key)
    results = _map_results(aws, event.results.ResultWriterDetails) if isinstance(event.results, MapRun) else []
    full = {
        "mode": event.discovery.mode,
        "pipeline_version": event.pipeline_version,
        "succeeded": sorted(r.title_id for r in results if r.status == "succeeded"),
        "failed": sorted(({"title_id": r.title_id, "reason": r.reason} for r in results if r.status != "succeeded"),
                         key=lambda f: f["title_id"]),
        "skipped": sorted(lists.get("skipped", [])),
        "not_found": sorted(lists.get("not_found", [])),
        "deferred": lists.get("deferred", 0),  # titles left for the next scheduled run (max_titles_per_run)
        # titles that failed on their host max_attempts runs in a row: no longer retried (docs/runbook.md)
        "parked": sorted(lists.get("parked", []), key=lambda p: p["title_id"]),
    }  # fmt: skip
    full["counts"] = {k: len(full[k]) for k in GROUPS}
    key = event.discovery.lists_key.rsplit("/", 1)[0] + "/summary.json"
    aws.s3.put_object(Bucket=settings.artifacts_bucket, Key=key, ContentType="application/json",
                      Body=json.dumps(full, ensure_ascii=False).encode())  # fmt: skip
    logger.info("run summary", extra={**full["counts"], "deferred": full["deferred"], "parked": len(full["parked"])})
    summary = {k: (v[:LIST_LIMIT] if k in (*GROUPS, "parked") else v) for k, v in full.items()}
    summary["parked_count"] = len(full["parked"])
    summary["truncated"] = any(len(full[k]) > LIST_LIMIT for k in GROUPS)
    summary["summary_uri"] = f"s3://{settings.artifacts_bucket}/{key}"
    return summary


def _read_json(aws: Aws, bucket: str, key: str) -> Any:
    return json.loads(aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _map_results(aws: Aws, where: ResultWriterDetails) -> list[TitleResult]:
    """Each title's result from the Map run's result files (a child that failed or never ran is a failure)."""
    manifest = _read_json(aws, where.Bucket, where.Key)
    bucket = manifest.get("DestinationBucket") or where.Bucket
    results: list[TitleResult] = []
    for status, files in manifest.get("ResultFiles", {}).items():
        for file in files:
            for child in _read_json(aws, bucket, file["Key"]):
                results.append(_child_result(status, child))
    return results


def _child_result(status: str, child: dict[str, Any]) -> TitleResult:
    if status == "SUCCEEDED" and child.get("Output"):
        return TitleResult(**json.loads(child["Output"]))
    title = json.loads(child.get("Input") or "{}").get("title", {})
    why = ": ".join(x for x in (child.get("Error"), child.get("Cause")) if x) or status.lower()
    return TitleResult(title_id=title.get("title_id", "unknown"), status="failed",
                       reason=f"{title.get('title_id', 'a title')}: its branch of the run ended {status}: {why}")  # fmt: skip
