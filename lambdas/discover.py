"""``discover``: which titles a run processes, written to S3 as the Distributed Map's item list.

Scheduled runs take the videos delivered under the input prefix since the watermark (minus an
overlap, so nothing delivered during a run is missed), oldest first, and drop those the catalog
shows were already processed from the same object (ETag) by the current pipeline version,
whatever their status: a title that failed on bad input is retried when it is delivered again,
by a new pipeline version, or by a manual run. After a pipeline version change the watermark is
ignored and every delivered title is considered again.

A back-catalogue must not break a run: a run takes at most ``max_titles_per_run`` titles (the
rest wait for the next run), and nothing that grows with the catalogue travels in the state: the
item list and the skipped / not-found lists are written to S3, the output holds counts and keys.
The watermark advances per completed title: each title a run takes gets a ``#PENDING`` marker,
deleted by the state machine when the title completes; the next run lists from the oldest marker
still there (a run that died or timed out) or from ``listed_through``, the delivery time of the
first title this run left for later (or the run's start when it took them all).

Manual runs take the given title ids and stages; a stage's upstream stages are added when the
catalog has no succeeded record for them. Each item says, per Batch job, whether it runs and
which of its stages (``jobs.<job>`` = ``{"run": bool, "stages": "a,b"}``, the job's
``PRISM_STAGES``): a job runs only the stages of the run, never the rest of its group. ``force`` reruns the requested stages even when up to
date (the worker decides "up to date" from fingerprints, so without ``force`` a requested stage
that is current costs one short job).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from _shared import Aws, Settings
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, model_validator

from prism.artifacts import title_id_for
from prism.cloud.s3 import S3Uri
from prism.contract import RUNS_PREFIX as CONTRACT_RUNS_PREFIX

logger = Logger(service="prism-discover")

RUNS_PREFIX = CONTRACT_RUNS_PREFIX.rstrip("/")


class RunRequest(BaseModel):
    """The state machine's input: what the schedule or an operator asked for."""

    mode: Literal["scheduled", "manual"]
    titles: list[str] = Field(default_factory=list)
    stages: list[str] = Field(default_factory=list)
    force: bool = False
    # The audio stage's language hint (ISO 639-1/-2, e.g. "ko") for every title of a manual run, and per title;
    # a title named in neither gets the environment's default hint.
    language: str = Field(default="", pattern=r"^([a-z]{2,3})?$")
    language_hints: dict[str, Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _manual_needs_titles(self) -> RunRequest:
        if self.mode == "manual" and not self.titles:
            raise ValueError("a manual run needs at least one title id in 'titles'")
        if self.mode == "scheduled" and (
            self.titles or self.stages or self.force or self.language or self.language_hints
        ):
            raise ValueError("a scheduled run takes no titles, stages, force or language hints")
        if stray := sorted(set(self.language_hints) - set(self.titles)):
            raise ValueError(f"language_hints name titles this run does not take: {stray}")
        return self


class DiscoverEvent(BaseModel):
    request: RunRequest
    execution: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    started_at: str = ""  # the execution's start time, stored as the watermark when the run completes


@logger.inject_lambda_context(log_event=True)
@event_parser(model=DiscoverEvent)
def handler(event: DiscoverEvent, context: LambdaContext) -> dict:
    settings = Settings.from_env()
    aws = Aws(settings)
    request = event.request
    unknown = sorted(set(request.stages) - set(settings.stage_graph))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this pipeline runs {list(settings.stage_graph)}")
    deferred = 0
    if request.mode == "scheduled":
        items, skipped, not_found, deferred = _scheduled(aws, event.execution, event.started_at)
    else:
        items, skipped, not_found = _manual(aws, request)
    run = f"{RUNS_PREFIX}/{event.execution}"
    _put_json(aws, f"{run}/titles.json", items)
    _put_json(aws, f"{run}/discovery.json", {"skipped": skipped, "not_found": not_found, "deferred": deferred})
    logger.info("discovered", extra={"count": len(items), "skipped": len(skipped), "not_found": len(not_found),
                                     "deferred": deferred})  # fmt: skip
    return {
        "mode": request.mode,
        "items_bucket": settings.artifacts_bucket,
        "items_key": f"{run}/titles.json",
        "lists_key": f"{run}/discovery.json",
        "count": len(items),
        "skipped_count": len(skipped),
        "not_found_count": len(not_found),
        "deferred_count": deferred,
        "started_at": event.started_at,
    }


def _put_json(aws: Aws, key: str, value) -> None:
    aws.s3.put_object(Bucket=aws.settings.artifacts_bucket, Key=key, ContentType="application/json",
                      Body=json.dumps(value, ensure_ascii=False).encode())  # fmt: skip


def _item(settings: Settings, mode: str, title_id: str, uri: str, etag: str, run: set[str], force: bool,
          language_hint: str = "") -> dict:  # fmt: skip
    return {
        "title_id": title_id,
        "source_uri": uri,
        "source_etag": etag,
        "stages": [s for s in settings.stage_graph if s in run],
        "jobs": {
            job: {"run": bool(chosen), "stages": ",".join(chosen)}
            for job, spec in settings.jobs.items()
            for chosen in [[s for s in spec["stages"] if s in run]]
        },
        "force": "true" if force else "false",
        "job_queue": settings.job_queues.get(mode, ""),
        "language_hint": language_hint or settings.language_hint,
    }


def _delivered(aws: Aws, since: datetime | None) -> dict[str, dict]:
    """Videos under the input prefix, by title id (the newest object wins a name clash)."""
    settings = aws.settings
    found: dict[str, dict] = {}
    pages = aws.s3.get_paginator("list_objects_v2").paginate(Bucket=settings.input_bucket, Prefix=settings.input_prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            if not obj["Key"].lower().endswith(settings.video_suffixes):
                continue
            if since is not None and obj["LastModified"] < since:
                continue
            title_id = title_id_for(obj["Key"])
            if title_id in found and found[title_id]["LastModified"] >= obj["LastModified"]:
                logger.warning(
                    "title id clash, keeping the newer object", extra={"title_id": title_id, "key": obj["Key"]}
                )
                continue
            found[title_id] = obj
    return found


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value)  # Python 3.11+ reads the "Z" Step Functions writes


def _scheduled(aws: Aws, execution: str, started_at: str) -> tuple[list[dict], list[str], list[str], int]:
    """(items, skipped, not found, titles left for the next run); records the watermark and pending markers."""
    settings = aws.settings
    catalog = aws.catalog
    since = None
    mark = catalog.run_watermark("scheduled")
    pending = catalog.pending()
    listed = (mark or {}).get("listed_through") or (mark or {}).get("started_at")  # started_at: before markers
    if mark and mark.get("pipeline_version") == settings.pipeline_version and listed:
        low = min([_iso(listed), *(_iso(at) for at in pending.values())])
        since = low - timedelta(seconds=settings.watermark_overlap_s)
    candidates = sorted(_delivered(aws, since).items(), key=lambda c: (c[1]["LastModified"], c[0]))
    items, skipped, taken = [], [], {}
    position = 0
    while position < len(candidates) and len(items) < settings.max_titles_per_run:
        batch = candidates[position : position + 100]
        known = catalog.titles_by_id([title_id for title_id, _ in batch])
        for title_id, obj in batch:
            if len(items) >= settings.max_titles_per_run:
                break
            position += 1
            etag = obj["ETag"].strip('"')
            record = known.get(title_id)
            if (
                record
                and record.get("source_etag") == etag
                and record.get("pipeline_version") == settings.pipeline_version
            ):
                skipped.append(title_id)
                continue
            uri = str(S3Uri(settings.input_bucket, obj["Key"]))
            items.append(_item(settings, "scheduled", title_id, uri, etag, set(settings.stage_graph), False))
            taken[title_id] = obj["LastModified"].isoformat()
    left = candidates[position:]
    # Markers of titles this run did not take are done, gone from the input, or after listed_through.
    catalog.delete_pending(sorted(set(pending) - set(taken)))
    catalog.put_pending(taken, execution)
    listed_through = left[0][1]["LastModified"].isoformat() if left else (started_at or datetime.now(UTC).isoformat())
    catalog.put_run_watermark(listed_through, settings.pipeline_version, execution)
    return items, skipped, [], len(left)


def _manual(aws: Aws, event: RunRequest) -> tuple[list[dict], list[str], list[str]]:
    settings = aws.settings
    requested = set(event.stages or settings.stage_graph)
    delivered: dict[str, dict] | None = None
    items, not_found = [], []
    for title_id in dict.fromkeys(event.titles):
        obj = None
        known = aws.catalog.get_title(title_id)
        if known and known.source_uri.startswith("s3://"):
            src = S3Uri.parse(known.source_uri)
            try:
                head = aws.s3.head_object(Bucket=src.bucket, Key=src.key)
                obj = {"Key": src.key, "ETag": head["ETag"], "Bucket": src.bucket}
            except aws.s3.exceptions.ClientError:
                obj = None
        if obj is None:
            delivered = delivered if delivered is not None else _delivered(aws, None)
            if title_id in delivered:
                obj = {**delivered[title_id], "Bucket": settings.input_bucket}
        if obj is None:
            not_found.append(title_id)
            continue
        run = set(requested)
        for stage in list(settings.stage_graph)[::-1]:
            if stage in run:
                for dep in settings.stage_graph[stage]:
                    record = aws.catalog.get_stage(title_id, dep)
                    if record is None or record.status != "succeeded":
                        run.add(dep)
        uri = str(S3Uri(obj["Bucket"], obj["Key"]))
        hint = event.language_hints.get(title_id) or event.language
        items.append(_item(settings, "manual", title_id, uri, obj["ETag"].strip('"'), run, event.force, hint))
    return items, [], not_found
