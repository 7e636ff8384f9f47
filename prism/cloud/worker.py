"""The Batch worker: ``python -m prism.cloud.worker`` runs a group of stages of one title stored in S3.

A Batch job is a group of stages (``cdk/config.py`` ``JobSpec``, e.g. ``visual`` = shots,
keyframes, cues) that read the same decoded streams: the worker downloads the source once and
runs the stages in one :meth:`~prism.runner.Runner.run_title` call, so the video is decoded once
for all of them (``SharedMedia``). ``PRISM_STAGES`` (``--stages``) lists the stages to run: the
job definition sets the whole group, and Step Functions overrides it with the stages of the
group a run asked for, so a manual run of ``cues`` runs only ``cues``. In a local scratch
directory it runs the same ``Runner`` and stage code as ``prism run``, then publishes to the
artifacts bucket:

1. Up to date? A stage whose catalog record has the fingerprint this job would produce (same
   source, model, params, upstream) and whose outputs are all in S3 is not run; if that holds
   for every stage, the job exits 0 without downloading anything. A retried or duplicated job is
   therefore a no-op. ``force`` runs every listed stage.
2. Otherwise: download the source (multipart ranged GETs) and the artifacts of the required
   stages that do not run here, run the remaining stages, upload each succeeded stage's files
   under ``titles/<title_id>/`` (nested files first, indexes last, each PUT atomic), then write
   each stage record to the catalog, then delete outputs a previous run listed that this run no
   longer produces.

The worker never writes ``manifest.json``: jobs of one title run in parallel, so each job writes
only its stage records (each with its manifest entry) and the ``finalize`` Lambda assembles the
manifest once all of them have finished. Exit codes: 0 every stage succeeded or was up to date,
1 a stage failed or was blocked (bad input: not retried; every stage it ran is recorded),
2 bad configuration, 75 transient AWS error (the job definition's retry strategy retries it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism import __version__
from prism.catalog import StageRecord, TitleRecord
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.s3 import (
    ListingDenied,
    S3Uri,
    artifact_key,
    content_type,
    existing_keys,
    title_prefix,
    upload_order,
)
from prism import contract as c
from prism.contract import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_TRANSIENT, WORKER_MODULE
from prism.errors import ConfigError, PrismError
from prism.runner import Runner, StageOutcome, fingerprint
from prism.stages.base import Stage, registry, resolve_order

log = logging.getLogger(WORKER_MODULE)

UP_TO_DATE = "up to date"


@dataclass(frozen=True)
class Job:
    """One Batch job: which stages of which title, and where things live."""

    stages: tuple[str, ...]
    title_id: str
    source_uri: str
    artifacts_bucket: str
    catalog_table: str
    force: bool = False
    pipeline_version: str = __version__
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> its parameters
    name: str = ""  # the job definition's group (PRISM_JOB), for logs
    require_models: bool = False  # PRISM_REQUIRE_MODELS (the cloud): a stage without its model is a config error

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("no stages to run")
        if not self.title_id or "/" in self.title_id:
            raise ConfigError(f"invalid title id {self.title_id!r}")
        S3Uri.parse(self.source_uri)
        if not self.artifacts_bucket or not self.catalog_table:
            raise ConfigError("artifacts bucket and catalog table are required")
        if stray := sorted(set(self.params) - set(self.stages)):
            raise ConfigError(f"parameters given for stage(s) {stray} that this job does not run")


@dataclass
class JobResult:
    """Each listed stage's outcome, in run order (up-to-date ones are ``skipped`` and ``reused``)."""

    stages: list[StageOutcome]

    @property
    def status(self) -> str:  # failed | succeeded | skipped (every stage was up to date)
        if any(o.status == "failed" or o.blocked for o in self.stages):
            return "failed"
        return "skipped" if all(o.reused for o in self.stages) else "succeeded"

    @property
    def reason(self) -> str | None:
        return next((o.reason for o in self.stages if o.status == "failed" or o.blocked), None)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.status == "failed" else EXIT_OK

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "stages": {o.stage: {"status": o.status, "reused": o.reused, "reason": o.reason} for o in self.stages}}  # fmt: skip


@dataclass
class _Plan:
    """What a job must do: stages to run, and the fingerprints of those it takes as they are."""

    run: list[str]
    reused: dict[str, StageOutcome]
    upstream: dict[str, StageRecord]  # required stage that does not run here -> its succeeded record


class _DeferredCatalog:
    """Reads from the cloud catalog; holds the runner's writes until the artifacts are uploaded.

    Title records are not written by a stage job: ``finalize`` owns the title's status.
    """

    def __init__(self, catalog: DynamoCatalog):
        self.catalog = catalog
        self.stages: list[StageRecord] = []

    def put_title(self, record: TitleRecord) -> None:
        pass

    def get_title(self, title_id: str) -> TitleRecord | None:
        return self.catalog.get_title(title_id)

    def list_titles(self) -> list[TitleRecord]:
        return self.catalog.list_titles()

    def put_stage(self, record: StageRecord) -> None:
        self.stages.append(record)

    def get_stage(self, title_id: str, stage: str) -> StageRecord | None:
        return self.catalog.get_stage(title_id, stage)

    def list_stages(self, title_id: str) -> list[StageRecord]:
        return self.catalog.list_stages(title_id)


def run_job(job: Job, *, s3=None, dynamodb=None, work_dir: Path | None = None) -> JobResult:
    """Run ``job`` end to end (see module docstring). Raises only ConfigError and AWS errors."""
    import boto3

    s3 = s3 or boto3.client("s3")
    catalog = DynamoCatalog(job.catalog_table, client=dynamodb)
    stages = _make_stages(job)
    if job.require_models:
        _check_models(stages)
    src = S3Uri.parse(job.source_uri)
    head = s3.head_object(Bucket=src.bucket, Key=src.key)
    etag = head["ETag"].strip('"')

    records = _records(catalog, job, stages)
    sha = catalog.source_hash(job.source_uri, etag)
    if sha and not (plan := _plan(s3, job, stages, records, sha)).run:
        return JobResult(list(plan.reused.values()))

    scratch = Path(tempfile.mkdtemp(prefix=f"prism-{job.name or 'job'}-", dir=work_dir))
    try:
        local_source = scratch / "source" / Path(src.key).name
        local_source.parent.mkdir(parents=True)
        log.info("downloading %s (%d bytes)", job.source_uri, head["ContentLength"])
        s3.download_file(src.bucket, src.key, str(local_source))  # multipart ranged GETs
        if not sha:
            with open(local_source, "rb") as fh:
                sha = hashlib.file_digest(fh, "sha256").hexdigest()
            catalog.store_source_hash(job.source_uri, etag, sha)
            if not (plan := _plan(s3, job, stages, records, sha)).run:
                return JobResult(list(plan.reused.values()))
        out_dir = scratch / "out"
        tdir = out_dir / "titles" / job.title_id
        for record in plan.upstream.values():
            for rel in record.outputs:
                target = tdir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(job.artifacts_bucket, artifact_key(job.title_id, rel), str(target))
        deferred = _DeferredCatalog(catalog)
        runner = Runner(out_dir, catalog=deferred, params={n: job.params.get(n, {}) for n in plan.run}, force=True)
        title = runner.run_title(
            local_source,
            plan.run,
            job.title_id,
            source_facts={"uri": job.source_uri, "etag": etag, "sha256": sha},
            upstream={dep: rec.fingerprint for dep, rec in plan.upstream.items()},
        )
        outcomes = {o.stage: o for o in title.stages}
        manifest = json.loads((tdir / "manifest.json").read_text(encoding="utf-8"))
        for outcome in title.stages:
            if outcome.status == "succeeded":
                for rel in upload_order(outcome.outputs):
                    s3.upload_file(
                        str(tdir / rel), job.artifacts_bucket, artifact_key(job.title_id, rel),
                        ExtraArgs={"ContentType": content_type(rel)},
                    )  # fmt: skip
        for record in deferred.stages:
            catalog.put_stage(record, extra={
                "manifest_entry": json.dumps(manifest["stages"][record.stage], ensure_ascii=False, default=str),
                "source": json.dumps(manifest["source"], ensure_ascii=False, default=str),
                "source_etag": etag,
                "pipeline_version": job.pipeline_version,
            })  # fmt: skip
        for name, outcome in outcomes.items():
            previous = records.get(name)
            if outcome.status == "succeeded" and previous is not None:
                for stale in sorted(set(previous.outputs) - set(outcome.outputs)):
                    s3.delete_object(Bucket=job.artifacts_bucket, Key=artifact_key(job.title_id, stale))
        return JobResult([plan.reused.get(name) or outcomes[name] for name in stages])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _make_stages(job: Job) -> dict[str, Stage]:
    """The job's stages, constructed (so their params validated), in an order that respects ``requires``."""
    known = registry()
    unknown = [name for name in job.stages if name not in known]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; available: {sorted(known)}")
    return {name: known[name](job.params.get(name)) for name in resolve_order(list(job.stages)) if name in job.stages}


def _embeddings_model(stage: Stage) -> None:
    from prism.stages.embeddings import model_location, resolve_model_dir

    resolve_model_dir(model_location(stage.params.model))


def _asr_model(stage: Stage) -> None:
    from prism.audio.speech import resolve_model

    resolve_model(stage.params.model)


# Stages whose weights can be configuration (not the ones in a wheel): how to tell they are there.
MODEL_CHECKS = {"embeddings": _embeddings_model, "audio": _asr_model}


def _check_models(stages: dict[str, Stage]) -> None:
    """Locally a stage without its model ends ``skipped``; in the cloud that would count the title as
    succeeded and spend a GPU job on nothing, so the job fails at once (exit 2, not retried)."""
    from prism.errors import ModelUnavailable

    for name, stage in stages.items():
        if check := MODEL_CHECKS.get(name):
            try:
                check(stage)
            except ModelUnavailable as exc:
                raise ConfigError(f"stage {name} has no model in this worker: {exc}") from exc


def _records(catalog: DynamoCatalog, job: Job, stages: dict[str, Stage]) -> dict[str, StageRecord]:
    """Current records of the job's stages and of the stages they require."""
    names = dict.fromkeys([*stages, *(dep for stage in stages.values() for dep in stage.requires)])
    return {name: record for name in names if (record := catalog.get_stage(job.title_id, name)) is not None}


def _plan(s3, job: Job, stages: dict[str, Stage], records: dict[str, StageRecord], sha: str) -> _Plan:
    """Which stages are up to date, by the fingerprints they would have now (no download needed)."""
    expected: dict[str, str | None] = {}
    for name, record in records.items():
        if name not in stages and record.status == "succeeded" and record.fingerprint:
            expected[name] = record.fingerprint
    run: list[str] = []
    reused: dict[str, StageOutcome] = {}
    stored: set[str] | None = None  # the title's keys in S3, listed once (not a HeadObject per file)
    for name, stage in stages.items():
        deps = [expected.get(d) for d in stage.requires]
        expected[name] = fingerprint(sha, stage, deps) if all(deps) else None
        previous = records.get(name)
        current = (
            not job.force
            and expected[name] is not None
            and previous is not None
            and previous.status == "succeeded"
            and previous.fingerprint == expected[name]
        )
        if current:
            if stored is None:
                stored = existing_keys(s3, job.artifacts_bucket, title_prefix(job.title_id))
            current = all(artifact_key(job.title_id, rel) in stored for rel in previous.outputs)
        if current:
            log.info("%s/%s is up to date (fingerprint %s); not running it", job.title_id, name, expected[name])
            reused[name] = StageOutcome(name, "skipped", UP_TO_DATE, outputs=previous.outputs, reused=True)
        else:
            run.append(name)
    needed = {dep for name in run for dep in stages[name].requires if dep not in run}
    upstream = {}
    for dep in needed:  # a required stage that neither runs here nor succeeded is left out: the runner blocks on it
        record = records.get(dep)
        if (
            record is not None
            and record.status == "succeeded"
            and record.fingerprint
            and (dep not in stages or dep in reused)
        ):
            upstream[dep] = record
    return _Plan(run, reused, upstream)


def _sync_models(location: str, dest: Path, s3=None) -> None:
    """Copy model weights from ``s3://bucket/prefix`` into ``dest`` (when not baked into the image)."""
    import boto3

    s3 = s3 or boto3.client("s3")
    from urllib.parse import urlparse

    parsed = urlparse(location)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"PRISM_MODEL_LOCATION must be s3://bucket/prefix, got {location!r}")
    bucket, prefix = parsed.netloc, parsed.path.strip("/") + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) :]
            if target.exists() and target.stat().st_size == obj["Size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))


TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded", "SlowDown",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalServerError", "ServiceUnavailable",
    "TransactionInProgressException",
})  # fmt: skip


def is_transient(exc) -> bool:
    """Worth a retry: throttling, timeouts and server errors; not AccessDenied or a missing object."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return error.get("Code") in TRANSIENT_CODES or status >= 500


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def parse_args(argv: list[str] | None = None) -> Job:
    """Arguments default to the ``PRISM_*`` environment the job definition and Step Functions set."""
    env = os.environ
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=env.get(c.ENV_STAGES), help="comma-separated stages of this job to run")
    parser.add_argument("--job", default=env.get(c.ENV_JOB, ""), help="the job definition's group name (logs)")
    parser.add_argument("--title-id", default=env.get(c.ENV_TITLE_ID))
    parser.add_argument("--source", default=env.get(c.ENV_SOURCE_URI), help="s3://bucket/key of the video")
    parser.add_argument("--artifacts-bucket", default=env.get(c.ENV_ARTIFACTS_BUCKET))
    parser.add_argument("--catalog-table", default=env.get(c.ENV_CATALOG_TABLE))
    parser.add_argument("--pipeline-version", default=env.get(c.ENV_PIPELINE_VERSION, __version__))
    parser.add_argument("--params", default=env.get(c.ENV_PARAMS), help='JSON: {"<stage>": {parameters}}')
    parser.add_argument("--force", action="store_true", default=_truthy(env.get(c.ENV_FORCE)))
    parser.add_argument("--require-models", action="store_true", default=_truthy(env.get(c.ENV_REQUIRE_MODELS)),
                        help="fail (exit 2) when a stage's model is missing instead of skipping the stage")  # fmt: skip
    args = parser.parse_args(argv)
    missing = [n for n in ("stages", "title_id", "source", "artifacts_bucket", "catalog_table") if not getattr(args, n)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (flags or PRISM_* environment)")
    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not JSON: {exc}") from exc
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ConfigError('--params must be a JSON object of stage -> parameters, e.g. {"shots": {"threshold": 0.4}}')
    stages = tuple(dict.fromkeys(s.strip() for s in args.stages.split(",") if s.strip()))
    return Job(
        stages=stages, title_id=args.title_id, source_uri=args.source, artifacts_bucket=args.artifacts_bucket,
        catalog_table=args.catalog_table, force=args.force, pipeline_version=args.pipeline_version, params=params,
        name=args.job, require_models=args.require_models,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The container entrypoint; turns every outcome into one JSON log line and an exit code."""
    from botocore.exceptions import BotoCoreError, ClientError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        job = parse_args(argv)
        if location := os.environ.get(c.ENV_MODEL_LOCATION):
            model_dir = Path(os.environ.get(c.ENV_MODEL_DIR, "/opt/prism/models"))
            _sync_models(location, model_dir)
        result = run_job(job)
    except (ConfigError, ValueError, ListingDenied) as exc:  # not worth a retry: the deployment is wrong
        log.warning("configuration error: %s", exc)
        return EXIT_CONFIG
    except ClientError as exc:
        if not is_transient(exc):  # AccessDenied, NoSuchKey...: a retry gets the same answer
            log.warning("AWS refused the job (not retried): %s", exc)
            return EXIT_CONFIG
        log.warning("transient AWS error, the job will be retried: %s", exc)
        return EXIT_TRANSIENT
    except BotoCoreError as exc:  # connection errors, timeouts
        log.warning("transient AWS error, the job will be retried: %s", exc)
        return EXIT_TRANSIENT
    except PrismError as exc:
        log.warning("stage failed: %s", exc)
        return EXIT_FAILED
    log.info(json.dumps({"title_id": job.title_id, "job": job.name, **result.summary()}, ensure_ascii=False))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
