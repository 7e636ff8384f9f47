"""What the handlers share: settings from the environment, clients, the stage and job graphs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property

import boto3

from prism import contract as c
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.delivery import Delivery
from prism.contract import EVENT_SOURCE, TITLE_FAILED, TITLE_PREPROCESSED

__all__ = ["EVENT_SOURCE", "TITLE_FAILED", "TITLE_PREPROCESSED", "Aws", "Settings", "jobs_after", "put_title_event",
           "upstream_of"]  # fmt: skip


@dataclass(frozen=True)
class Settings:
    catalog_table: str
    artifacts_bucket: str
    input_bucket: str
    input_prefix: str
    event_bus: str
    pipeline_version: str
    stage_graph: dict[str, list[str]]  # stage -> stages it requires, in pipeline order
    jobs: dict[str, dict[str, list[str]]]  # Batch job -> {"stages": [...], "requires": [jobs]}, in order
    job_queues: dict[str, str]  # run mode -> job queue ARN
    video_suffixes: tuple[str, ...]
    watermark_overlap_s: int
    max_titles_per_run: int  # a scheduled run takes at most this many titles; the rest wait for the next run
    language_hint: str = ""  # the audio stage's language hint for titles a run names none for ("" = track tag)
    delivery: Delivery = Delivery()  # the input layout: which objects are titles (prism.cloud.delivery)
    max_attempts: int = 3  # scheduled runs that take a failed title before it is parked

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        suffixes = [s.strip().lower() for s in env.get(c.ENV_VIDEO_SUFFIXES, ".mp4").split(",")]
        return cls(
            catalog_table=env[c.ENV_CATALOG_TABLE],
            artifacts_bucket=env[c.ENV_ARTIFACTS_BUCKET],
            input_bucket=env.get(c.ENV_INPUT_BUCKET, ""),
            input_prefix=env.get(c.ENV_INPUT_PREFIX, ""),
            event_bus=env.get(c.ENV_EVENT_BUS, "default"),
            pipeline_version=env[c.ENV_PIPELINE_VERSION],
            stage_graph=json.loads(env.get(c.ENV_STAGE_GRAPH, "{}")),
            jobs=json.loads(env.get(c.ENV_JOBS, "{}")),
            job_queues=json.loads(env.get(c.ENV_JOB_QUEUES, "{}")),
            video_suffixes=tuple(suffixes),
            watermark_overlap_s=int(env.get(c.ENV_WATERMARK_OVERLAP_S, "3600")),
            max_titles_per_run=int(env.get(c.ENV_MAX_TITLES_PER_RUN, "1000")),
            language_hint=env.get(c.ENV_LANGUAGE_HINT, ""),
            delivery=Delivery.from_json({**json.loads(env.get(c.ENV_DELIVERY) or "{}"), "video_suffixes": suffixes}),
            max_attempts=int(env.get(c.ENV_MAX_ATTEMPTS, "3")),
        )


class Aws:
    """Clients made on first use in each invocation (never at import, so tests can mock them)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def s3(self):
        return boto3.client("s3")

    @cached_property
    def events(self):
        return boto3.client("events")

    @cached_property
    def catalog(self) -> DynamoCatalog:
        return DynamoCatalog(self.settings.catalog_table, client=boto3.client("dynamodb"))


REFERENCE_HOURS = 2  # a JobSpec's timeout_minutes is for a title this long (the 2 h feature the jobs are sized on)


def job_timeout_s(timeout_minutes: float, duration_s: float | None) -> int:
    """A job's timeout for a title of ``duration_s``: 30% fixed (start, download, model load), the rest in
    proportion to the duration, between that fixed part and three times the reference; unknown: the reference."""
    reference = timeout_minutes * 60
    if duration_s is None:
        return int(reference)
    scaled = 0.3 * reference + 0.7 * reference * duration_s / (REFERENCE_HOURS * 3600)
    return int(min(max(scaled, 0.3 * reference, 60), 3 * reference))


def jobs_after(job: str, jobs: dict[str, dict[str, list[str]]]) -> list[str]:
    """Jobs that (transitively) require ``job``, in order: a failed job stops them for that title."""
    after: list[str] = []
    for name, spec in jobs.items():
        if job in spec["requires"] or any(dep in after for dep in spec["requires"]):
            after.append(name)
    return after


def upstream_of(stage: str, graph: dict[str, list[str]]) -> set[str]:
    """Stages ``stage`` (transitively) requires."""
    found: set[str] = set()
    pending = list(graph.get(stage, []))
    while pending:
        dep = pending.pop()
        if dep not in found:
            found.add(dep)
            pending.extend(graph.get(dep, []))
    return found


class EventNotDelivered(RuntimeError):
    """EventBridge accepted the call but not the entry (``FailedEntryCount``): consumers would never hear of it."""


def put_title_event(aws: Aws, detail_type: str, detail: dict) -> None:
    """One EventBridge event per title (source ``prism``) for content-QC, posters and others.

    PutEvents answers 200 even when an entry fails; a failed entry raises, so the state machine's
    retry and catch see it instead of the title silently going unannounced.
    """
    response = aws.events.put_events(
        Entries=[
            {
                "Source": EVENT_SOURCE,
                "DetailType": detail_type,
                "Detail": json.dumps(detail, ensure_ascii=False, default=str),
                "EventBusName": aws.settings.event_bus,
            }
        ]
    )
    if response.get("FailedEntryCount"):
        entry = next((e for e in response.get("Entries", []) if e.get("ErrorCode")), {})
        raise EventNotDelivered(f"{detail.get('title_id')}: {detail_type} event not delivered to "
                                f"{aws.settings.event_bus}: {entry.get('ErrorCode')}: {entry.get('ErrorMessage')}")  # fmt: skip
