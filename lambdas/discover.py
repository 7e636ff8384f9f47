"""``discover``: which titles a run processes, written to S3 as the Distributed Map's item list.

Which objects are titles, and which file of a title is processed, is the environment's delivery
layout (``prism.cloud.delivery``, ``PRISM_DELIVERY``). Scheduled runs take, in this order and up to
the cap: the titles delivered since the watermark (minus an overlap, so nothing delivered during a
run is missed), oldest first; then titles that failed for a reason other than their input (Spot
reclaimed past Batch's retries, a timeout, a host error) and are due a retry, while their attempt
count (``#ATTEMPTS``) is under ``PRISM_MAX_ATTEMPTS`` (after that they are *parked*: listed in the
run summary, counted in the ``TitlesParked`` metric, and alarmed on); then the back catalogue:
titles delivered before the watermark that this pipeline version has not processed (a version
bump's reprocessing, a catalogue that predates Prism), resumed from a cursor run after run. A
version bump therefore never delays that day's deliveries. A title processed from the same object
(ETag) by the current version is skipped whatever its status; one that failed on bad input is
retried when it is delivered again, by a new pipeline version, or by a manual run.

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

from _shared import Aws, Settings, job_timeout_s
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, model_validator

from prism.cloud.s3 import S3Uri
from prism.contract import METRIC_TITLES_DEFERRED, METRIC_TITLES_PARKED, METRIC_TITLES_TAKEN
from prism.contract import RUNS_PREFIX as CONTRACT_RUNS_PREFIX

logger = Logger(service="prism-discover")
metrics = Metrics(namespace="Prism", service="prism-discover")

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


@metrics.log_metrics
@logger.inject_lambda_context(log_event=True)
@event_parser(model=DiscoverEvent)
def handler(event: DiscoverEvent, context: LambdaContext) -> dict:
    settings = Settings.from_env()
    aws = Aws(settings)
    request = event.request
    unknown = sorted(set(request.stages) - set(settings.stage_graph))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this pipeline runs {list(settings.stage_graph)}")
    deferred, parked = 0, []
    if request.mode == "scheduled":
        items, skipped, not_found, deferred, parked = _scheduled(aws, event.execution, event.started_at)
        for name, value in ((METRIC_TITLES_TAKEN, len(items)), (METRIC_TITLES_DEFERRED, deferred),
                            (METRIC_TITLES_PARKED, len(parked))):  # fmt: skip
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    else:
        items, skipped, not_found = _manual(aws, request)
    run = f"{RUNS_PREFIX}/{event.execution}"
    _put_json(aws, f"{run}/titles.json", items)
    _put_json(aws, f"{run}/discovery.json",
              {"skipped": skipped, "not_found": not_found, "deferred": deferred, "parked": parked})  # fmt: skip
    logger.info("discovered", extra={"count": len(items), "skipped": len(skipped), "not_found": len(not_found),
                                     "deferred": deferred, "parked": len(parked)})  # fmt: skip
    return {
        "mode": request.mode,
        "items_bucket": settings.artifacts_bucket,
        "items_key": f"{run}/titles.json",
        "lists_key": f"{run}/discovery.json",
        "count": len(items),
        "skipped_count": len(skipped),
        "not_found_count": len(not_found),
        "deferred_count": deferred,
        "parked_count": len(parked),
        "started_at": event.started_at,
    }


def _put_json(aws: Aws, key: str, value) -> None:
    aws.s3.put_object(Bucket=aws.settings.artifacts_bucket, Key=key, ContentType="application/json",
                      Body=json.dumps(value, ensure_ascii=False).encode())  # fmt: skip


def _item(settings: Settings, mode: str, title_id: str, uri: str, etag: str, run: set[str], force: bool,
          language_hint: str = "", size: int | None = None) -> dict:  # fmt: skip
    duration = settings.delivery.duration_bound_s(size) if size is not None else None
    return {
        "title_id": title_id,
        "source_uri": uri,
        "source_etag": etag,
        "stages": [s for s in settings.stage_graph if s in run],
        "jobs": {
            job: {
                "run": bool(chosen),
                "stages": ",".join(chosen),
                "timeout_s": job_timeout_s(spec.get("timeout_minutes", 30), duration),
            }
            for job, spec in settings.jobs.items()
            for chosen in [[s for s in spec["stages"] if s in run]]
        },  # fmt: skip
        "force": "true" if force else "false",
        "job_queue": settings.job_queues.get(mode, ""),
        "language_hint": language_hint or settings.language_hint,
    }


def _delivered(aws: Aws) -> dict[str, dict]:
    """Each title under the input prefix and the object of it to process (``Delivery``: the layout's rule)."""
    settings = aws.settings
    objects = [obj for page in aws.s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.input_bucket, Prefix=settings.input_prefix) for obj in page.get("Contents", [])]  # fmt: skip
    found, ignored = settings.delivery.titles(objects, settings.input_prefix)
    logger.info("listed the input", extra={"objects": len(objects), "titles": len(found), "ignored": ignored})
    return found


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value)  # Python 3.11+ reads the "Z" Step Functions writes


def _current(record: dict | None, etag: str, version: str) -> bool:
    """Processed (succeeded or failed) from this object by this pipeline version."""
    return bool(record) and record.get("source_etag") == etag and record.get("pipeline_version") == version


class _Picker:
    """The run's items, up to the cap, in priority order; remembers what it skipped."""

    def __init__(self, aws: Aws):
        self.aws, self.settings = aws, aws.settings
        self.items: list[dict] = []
        self.taken: dict[str, dict] = {}  # title id -> its object
        self.skipped: list[str] = []

    @property
    def full(self) -> bool:
        return len(self.items) >= self.settings.max_titles_per_run

    def take(self, title_id: str, obj: dict) -> None:
        uri = str(S3Uri(self.settings.input_bucket, obj["Key"]))
        self.items.append(_item(self.settings, "scheduled", title_id, uri, obj["ETag"].strip('"'),
                                set(self.settings.stage_graph), False, size=obj.get("Size")))  # fmt: skip
        self.taken[title_id] = obj

    def fill(self, candidates: list[tuple[str, dict]], exclude: set[str]) -> int:
        """Take the candidates not yet processed by this version, in order, until full: how many were examined."""
        position = 0
        version = self.settings.pipeline_version
        while position < len(candidates) and not self.full:
            batch = candidates[position : position + 100]
            known = self.aws.catalog.titles_by_id([t for t, _ in batch])
            for title_id, obj in batch:
                if self.full:
                    break
                position += 1
                if title_id in exclude or title_id in self.taken:
                    continue
                if _current(known.get(title_id), obj["ETag"].strip('"'), version):
                    self.skipped.append(title_id)
                    continue
                self.take(title_id, obj)
        return position


def _scheduled(aws: Aws, execution: str, started_at: str) -> tuple[list[dict], list[str], list[str], int, list[dict]]:
    """(items, skipped, not found, titles left for later runs, parked titles); records the watermark, the pending
    markers and the attempt counts.

    Priority: the deliveries since the watermark (oldest first), then failed titles due a retry, then the back
    catalogue (titles delivered before the watermark that this pipeline version has not processed: a version
    bump's reprocessing, or a catalogue delivered before Prism), which only fills the capacity left over.
    """
    settings, catalog = aws.settings, aws.catalog
    version = settings.pipeline_version
    mark = catalog.run_watermark("scheduled") or {}
    pending = catalog.pending()
    delivered = _delivered(aws)
    listed = mark.get("listed_through") or mark.get("started_at")  # started_at: before markers
    since = None
    if listed:
        since = min([_iso(listed), *(_iso(at) for at in pending.values())]) - timedelta(
            seconds=settings.watermark_overlap_s
        )
    ordered = sorted(delivered.items(), key=lambda c: (c[1]["LastModified"], c[0]))
    recent = [c for c in ordered if since is None or c[1]["LastModified"] >= since]
    older = [c for c in ordered if since is not None and c[1]["LastModified"] < since]

    # Failed titles: retried while under the attempt limit, parked after; a new object or version starts afresh.
    attempts = catalog.attempts()
    records = catalog.titles_by_id(list(attempts))
    retry, parked, finished = [], [], []
    for title_id, attempt in sorted(attempts.items(), key=lambda a: (a[1].get("attempts", 0), a[0])):
        obj = delivered.get(title_id)
        record = records.get(title_id)
        if (
            obj is None
            or attempt.get("source_etag") != obj["ETag"].strip('"')
            or attempt.get("pipeline_version") != version
        ):
            finished.append(title_id)
        elif (
            record
            and _current(record, attempt["source_etag"], version)
            and (
                record.get("status") == "succeeded" or record.get("retryable") is False  # bad input: not retried
            )
        ):
            finished.append(title_id)
        elif attempt.get("attempts", 0) >= settings.max_attempts:
            parked.append({"title_id": title_id, "attempts": attempt.get("attempts", 0),
                           "reason": (record or {}).get("reason") or "no result recorded"})  # fmt: skip
        else:
            retry.append((title_id, obj))
    catalog.delete_attempts(finished)
    hold = {p["title_id"] for p in parked} | {t for t, _ in retry}

    picker = _Picker(aws)
    examined = picker.fill(recent, exclude=hold)
    left_recent = recent[examined:]
    for title_id, obj in retry:
        if not picker.full:
            picker.take(title_id, obj)
    retries_left = sum(1 for t, _ in retry if t not in picker.taken)

    backfill: dict[str, object] = {"backfill_version": version, "backfilled": False, "backfill_after": ""}
    if mark.get("backfill_version") == version:
        backfill.update(backfilled=bool(mark.get("backfilled")), backfill_after=mark.get("backfill_after") or "")
    older_left = 0
    if not backfill["backfilled"]:
        cursor = str(backfill["backfill_after"])
        todo = [c for c in older if _cursor(c) > cursor]
        done = picker.fill(todo, exclude=hold)
        if done:
            backfill["backfill_after"] = _cursor(todo[done - 1])
        older_left = len(todo) - done
        # Everything listed was examined: this version's back catalogue is done (a version bump starts it again).
        backfill["backfilled"] = older_left == 0 and not left_recent

    listed_through = (
        left_recent[0][1]["LastModified"].isoformat() if left_recent else (started_at or datetime.now(UTC).isoformat())
    )
    # Markers of titles this run did not take are done, gone from the input, or after listed_through. A retried or
    # back-catalogue title's marker must not pull the watermark back to its old delivery (the back catalogue would
    # then pass for new deliveries): it holds listed_through, and a run that dies with it retries it by its attempts.
    recent_ids = {t for t, _ in recent}
    catalog.delete_pending(sorted(set(pending) - set(picker.taken)))
    catalog.put_pending({t: o["LastModified"].isoformat() if t in recent_ids else listed_through
                         for t, o in picker.taken.items()}, execution)  # fmt: skip
    catalog.put_attempts({
        t: {"attempts": (attempts[t].get("attempts", 0) if t in attempts and t not in finished else 0) + 1,
            "source_etag": o["ETag"].strip('"'), "pipeline_version": version, "execution": execution}
        for t, o in picker.taken.items()
    })  # fmt: skip
    catalog.put_run_watermark(listed_through, version, execution, **backfill)
    deferred = len(left_recent) + retries_left + older_left
    return picker.items, picker.skipped, [], deferred, parked


def _cursor(candidate: tuple[str, dict]) -> str:
    title_id, obj = candidate
    return f"{obj['LastModified'].isoformat()}|{title_id}"


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
                obj = {"Key": src.key, "ETag": head["ETag"], "Bucket": src.bucket, "Size": head.get("ContentLength")}
            except aws.s3.exceptions.ClientError:
                obj = None
        if obj is None:
            delivered = delivered if delivered is not None else _delivered(aws)
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
        items.append(
            _item(
                settings,
                "manual",
                title_id,
                uri,
                obj["ETag"].strip('"'),
                run,
                event.force,
                hint,
                size=obj.get("Size", obj.get("ContentLength")),
            )
        )
    return items, [], not_found
