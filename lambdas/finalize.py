"""``finalize``: after a title's stage jobs, write its ``manifest.json``, title record and event.

The only writer of a title's manifest: it merges the manifest entries the stage jobs stored in
their catalog records (stages ran in parallel, so none of them could write the manifest), checks
that every file a succeeded stage lists exists, validates the result against the v1 schema and
writes it after the files it lists. A stage whose files are missing is marked failed.
"""

from __future__ import annotations

import json
from typing import Any

from _shared import TITLE_FAILED, TITLE_PREPROCESSED, Aws, Settings, put_title_event
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from aws_lambda_powertools.utilities.validation import validate
from pydantic import Field

from prism.artifacts import StageEntry, is_blocked, manifest_schema, new_manifest, now_iso
from prism.catalog import TitleRecord
from prism.cloud.s3 import artifact_key, existing_keys, manifest_key, title_prefix
from prism.contract import Status

logger = Logger(service="prism-finalize")
metrics = Metrics(namespace="Prism", service="prism-finalize")


class FinalizeEvent(BaseModel):
    title_id: str = Field(min_length=1)
    source_uri: str = Field(pattern=r"^s3://")
    source_etag: str
    stages: list[str] = Field(min_length=1)
    execution: str = ""


@metrics.log_metrics
@logger.inject_lambda_context(log_event=True)
@event_parser(model=FinalizeEvent)
def handler(event: FinalizeEvent, context: LambdaContext) -> dict:
    settings = Settings.from_env()
    aws = Aws(settings)
    items = {i["stage"]: i for i in aws.catalog.stage_items(event.title_id)}
    # The title's keys, listed once: whether a manifest exists, and whether each succeeded stage's files do.
    stored = existing_keys(aws.s3, settings.artifacts_bucket, title_prefix(event.title_id))
    manifest = _existing_manifest(aws, event.title_id, stored)
    source = _source_facts(items.values(), event)
    if manifest is None:
        manifest = new_manifest(event.title_id, source, _prism_version(items.values()))
    manifest["source"] = source
    manifest["prism_version"] = _prism_version(items.values()) or manifest["prism_version"]

    for name, item in items.items():
        manifest["stages"][name] = item.get("manifest_entry") or _entry_from_record(item)
    for name in event.stages:
        entry = manifest["stages"].get(name)
        if entry is None:
            manifest["stages"][name] = _missing_entry(name)
        elif entry["status"] == Status.SUCCEEDED:
            missing = [rel for rel in entry["outputs"] if artifact_key(event.title_id, rel) not in stored]
            if missing:
                entry.update(
                    status=Status.FAILED.value,
                    outputs=[],
                    reason=f"{event.title_id}: stage {name} outputs missing in S3: {missing}",
                )
    manifest["updated_at"] = now_iso()
    validate(event=manifest, schema=_schema())
    aws.s3.put_object(
        Bucket=settings.artifacts_bucket, Key=manifest_key(event.title_id),
        Body=json.dumps(manifest, indent=2, ensure_ascii=False).encode(), ContentType="application/json",
    )  # fmt: skip

    this_run = {name: manifest["stages"][name] for name in event.stages}
    failed = [(n, e) for n, e in this_run.items() if e["status"] == Status.FAILED]
    blocked = [(n, e) for n, e in this_run.items() if is_blocked(e)]
    status = "failed" if failed or blocked else "succeeded"
    reason = (failed or blocked)[0][1]["reason"] if status == "failed" else None
    aws.catalog.put_title(
        TitleRecord(
            title_id=event.title_id, source_uri=source["uri"], source_bytes=source["bytes"],
            source_sha256=source["sha256"], status=status, reason=reason,
            prism_version=manifest["prism_version"], updated_at=now_iso(),
        ),
        extra={"source_etag": event.source_etag, "pipeline_version": settings.pipeline_version,
               "execution": event.execution},
    )  # fmt: skip
    detail = {
        "title_id": event.title_id,
        "status": status,
        "reason": reason,
        "manifest": f"s3://{settings.artifacts_bucket}/{manifest_key(event.title_id)}",
        "stages": {n: e["status"] for n, e in this_run.items()},
        "pipeline_version": settings.pipeline_version,
        "execution": event.execution,
    }
    put_title_event(aws, TITLE_PREPROCESSED if status == "succeeded" else TITLE_FAILED, detail)
    metrics.add_metric(
        name="TitlesSucceeded" if status == "succeeded" else "TitlesFailed", unit=MetricUnit.Count, value=1
    )
    for name, entry in this_run.items():
        if entry["status"] == "succeeded" and entry.get("duration_s"):
            with single_metric(
                name="StageDuration", unit=MetricUnit.Seconds, value=entry["duration_s"], namespace="Prism",
                default_dimensions={"stage": name},
            ):  # fmt: skip
                pass
    logger.info("title finalized", extra={"title_id": event.title_id, "status": status, "reason": reason})
    return {"title_id": event.title_id, "status": status, "reason": reason}


def _schema() -> dict[str, Any]:
    schema = dict(manifest_schema())
    schema.pop("$schema", None)  # fastjsonschema (Powertools) reads the keywords the manifest uses as draft 7
    return schema


def _existing_manifest(aws: Aws, title_id: str, stored: set[str]) -> dict[str, Any] | None:
    """The title's manifest if the listing has one. Never a GetObject to find out: finalize's ``s3:ListBucket``
    is conditioned on ``s3:prefix``, so S3 answers a missing key with 403 AccessDenied, not NoSuchKey."""
    key = manifest_key(title_id)
    if key not in stored:
        return None
    return json.loads(aws.s3.get_object(Bucket=aws.settings.artifacts_bucket, Key=key)["Body"].read())


def _source_facts(items, event: FinalizeEvent) -> dict[str, Any]:
    """The newest source facts a stage job recorded for this object, else what the event knows."""
    facts = [
        i["source"] for i in items if isinstance(i.get("source"), dict) and i["source"].get("etag") == event.source_etag
    ]
    if facts:
        return max(facts, key=lambda f: f.get("probe") is not None)
    return {"uri": event.source_uri, "bytes": None, "sha256": None, "etag": event.source_etag, "probe": None}


def _prism_version(items) -> str:
    versions = sorted({i.get("prism_version") for i in items if i.get("prism_version")})
    return versions[-1] if versions else "unknown"


def _entry_from_record(item: dict[str, Any]) -> dict[str, Any]:
    """A manifest entry for a record written without one (by ``record_failure``)."""
    return StageEntry.from_record(item).to_manifest()


def _missing_entry(stage: str) -> dict[str, Any]:
    reason = f"stage {stage} left no record (job never ran or was lost)"
    return StageEntry(Status.FAILED.value, reason, finished_at=now_iso()).to_manifest()
