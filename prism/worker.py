"""The Batch worker: ``python -m prism.worker`` runs one stage of one title stored in S3.

It runs the same :class:`~prism.runner.Runner` and stage code as ``prism run`` in a local
scratch directory, then publishes to the artifacts bucket:

1. Up to date? If the catalog holds a succeeded record for this stage with the fingerprint the
   job would produce (same source, model, params, upstream) and its outputs are all in S3, the
   job exits 0 without downloading anything. A retried or duplicated job is therefore a no-op.
2. Otherwise: download the source (multipart ranged GETs) and the required upstream artifacts,
   run the stage, upload its files under ``titles/<title_id>/`` (nested files first, indexes
   last, each PUT atomic), then write the stage record to the catalog, then delete outputs a
   previous run listed that this run no longer produces.

The worker never writes ``manifest.json``: stages of one title run as parallel Batch jobs, so
each job writes only its own stage record (with its manifest entry) and the ``finalize`` Lambda
assembles the manifest once all of them have finished. Exit codes: 0 succeeded or skipped,
1 the stage failed (bad input: not retried), 2 bad configuration, 75 transient AWS error
(the job definition's retry strategy retries it).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism import __version__
from prism.catalog import StageRecord, TitleRecord
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.s3 import S3Uri, artifact_key, content_type, object_exists, upload_order
from prism.errors import ConfigError, PrismError
from prism.runner import Runner, StageOutcome, fingerprint
from prism.stages.base import Stage, registry

log = logging.getLogger("prism.worker")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_TRANSIENT = 0, 1, 2, 75


@dataclass(frozen=True)
class Job:
    """One Batch job: which stage of which title, and where things live."""

    stage: str
    title_id: str
    source_uri: str
    artifacts_bucket: str
    catalog_table: str
    force: bool = False
    pipeline_version: str = __version__
    params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.title_id or "/" in self.title_id:
            raise ConfigError(f"invalid title id {self.title_id!r}")
        S3Uri.parse(self.source_uri)
        if not self.artifacts_bucket or not self.catalog_table:
            raise ConfigError("artifacts bucket and catalog table are required")


@dataclass
class JobResult:
    status: str  # succeeded | failed | skipped
    reason: str | None
    reused: bool
    outputs: list[str]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.status == "failed" else EXIT_OK


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
    stage = _make_stage(job)
    src = S3Uri.parse(job.source_uri)
    head = s3.head_object(Bucket=src.bucket, Key=src.key)
    etag = head["ETag"].strip('"')

    upstream = _upstream(catalog, job, stage)
    sha = catalog.source_hash(job.source_uri, etag)
    if sha and (done := _up_to_date(s3, catalog, job, stage, sha, upstream)):
        return done

    scratch = Path(tempfile.mkdtemp(prefix=f"prism-{job.stage}-", dir=work_dir))
    try:
        local_source = scratch / "source" / Path(src.key).name
        local_source.parent.mkdir(parents=True)
        log.info("downloading %s (%d bytes)", job.source_uri, head["ContentLength"])
        s3.download_file(src.bucket, src.key, str(local_source))  # multipart ranged GETs
        if not sha:
            with open(local_source, "rb") as fh:
                sha = hashlib.file_digest(fh, "sha256").hexdigest()
            catalog.store_source_hash(job.source_uri, etag, sha)
            if done := _up_to_date(s3, catalog, job, stage, sha, upstream):
                return done
        out_dir = scratch / "out"
        tdir = out_dir / "titles" / job.title_id
        for dep, record in upstream.items():
            for rel in record.outputs:
                target = tdir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(job.artifacts_bucket, artifact_key(job.title_id, rel), str(target))
        deferred = _DeferredCatalog(catalog)
        runner = Runner(out_dir, catalog=deferred, params={job.stage: job.params or {}}, force=True)
        title = runner.run_title(
            local_source,
            [job.stage],
            job.title_id,
            source_facts={"uri": job.source_uri, "etag": etag, "sha256": sha},
            upstream={dep: rec.fingerprint for dep, rec in upstream.items()},
        )
        outcome: StageOutcome = title.stages[0]
        manifest = json.loads((tdir / "manifest.json").read_text(encoding="utf-8"))
        previous = catalog.get_stage(job.title_id, job.stage)
        if outcome.status == "succeeded":
            for rel in upload_order(outcome.outputs):
                s3.upload_file(
                    str(tdir / rel), job.artifacts_bucket, artifact_key(job.title_id, rel),
                    ExtraArgs={"ContentType": content_type(rel)},
                )  # fmt: skip
        extra = {
            "manifest_entry": json.dumps(manifest["stages"][job.stage], ensure_ascii=False, default=str),
            "source": json.dumps(manifest["source"], ensure_ascii=False, default=str),
            "source_etag": etag,
            "pipeline_version": job.pipeline_version,
        }
        for record in deferred.stages:
            catalog.put_stage(record, extra=extra)
        if outcome.status == "succeeded" and previous is not None:
            for stale in sorted(set(previous.outputs) - set(outcome.outputs)):
                s3.delete_object(Bucket=job.artifacts_bucket, Key=artifact_key(job.title_id, stale))
        status = "failed" if title.status == "failed" else outcome.status
        return JobResult(status, outcome.reason or title.reason, False, outcome.outputs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _make_stage(job: Job) -> Stage:
    stages = registry()
    if job.stage not in stages:
        raise ConfigError(f"unknown stage {job.stage!r}; available: {sorted(stages)}")
    return stages[job.stage](job.params)


def _upstream(catalog: DynamoCatalog, job: Job, stage: Stage) -> dict[str, StageRecord]:
    """Succeeded records of the stages ``stage`` requires (a missing one blocks the stage)."""
    found = {}
    for dep in stage.requires:
        record = catalog.get_stage(job.title_id, dep)
        if record is not None and record.status == "succeeded" and record.fingerprint:
            found[dep] = record
    return found


def _up_to_date(s3, catalog, job: Job, stage: Stage, sha: str, upstream: dict[str, StageRecord]) -> JobResult | None:
    if job.force or set(upstream) != set(stage.requires):
        return None
    previous = catalog.get_stage(job.title_id, job.stage)
    expected = fingerprint(sha, stage, [upstream[d].fingerprint for d in stage.requires])
    if previous is None or previous.status != "succeeded" or previous.fingerprint != expected:
        return None
    if not all(object_exists(s3, job.artifacts_bucket, artifact_key(job.title_id, rel)) for rel in previous.outputs):
        return None
    log.info("%s/%s is up to date (fingerprint %s); nothing to do", job.title_id, job.stage, expected)
    return JobResult("skipped", "up to date", True, previous.outputs)


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
            target = dest / obj["Key"][len(prefix):]
            if target.exists() and target.stat().st_size == obj["Size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def parse_args(argv: list[str] | None = None) -> Job:
    """Arguments default to the ``PRISM_*`` environment the job definition and Step Functions set."""
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m prism.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=env.get("PRISM_STAGE"))
    parser.add_argument("--title-id", default=env.get("PRISM_TITLE_ID"))
    parser.add_argument("--source", default=env.get("PRISM_SOURCE_URI"), help="s3://bucket/key of the video")
    parser.add_argument("--artifacts-bucket", default=env.get("PRISM_ARTIFACTS_BUCKET"))
    parser.add_argument("--catalog-table", default=env.get("PRISM_CATALOG_TABLE"))
    parser.add_argument("--pipeline-version", default=env.get("PRISM_PIPELINE_VERSION", __version__))
    parser.add_argument("--params", default=env.get("PRISM_PARAMS"), help="JSON object of stage parameters")
    parser.add_argument("--force", action="store_true", default=_truthy(env.get("PRISM_FORCE")))
    args = parser.parse_args(argv)
    missing = [n for n in ("stage", "title_id", "source", "artifacts_bucket", "catalog_table") if not getattr(args, n)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (flags or PRISM_* environment)")
    try:
        params = json.loads(args.params) if args.params else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not JSON: {exc}") from exc
    return Job(
        stage=args.stage, title_id=args.title_id, source_uri=args.source, artifacts_bucket=args.artifacts_bucket,
        catalog_table=args.catalog_table, force=args.force, pipeline_version=args.pipeline_version, params=params,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The container entrypoint; turns every outcome into one JSON log line and an exit code."""
    from botocore.exceptions import BotoCoreError, ClientError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        job = parse_args(argv)
        if location := os.environ.get("PRISM_MODEL_LOCATION"):
            model_dir = Path(os.environ.get("PRISM_MODEL_DIR", "/opt/prism/models"))
            _sync_models(location, model_dir)
        result = run_job(job)
    except (ConfigError, ValueError) as exc:
        log.warning("configuration error: %s", exc)
        return EXIT_CONFIG
    except (ClientError, BotoCoreError) as exc:
        log.warning("transient AWS error, the job will be retried: %s", exc)
        return EXIT_TRANSIENT
    except PrismError as exc:
        log.warning("stage failed: %s", exc)
        return EXIT_FAILED
    log.info(json.dumps({"title_id": job.title_id, "stage": job.stage, **vars(result)}, ensure_ascii=False))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
