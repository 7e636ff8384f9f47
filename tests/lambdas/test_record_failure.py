"""``record_failure`` on what Step Functions hands it when a Batch job failed (moto DynamoDB, no synthesis)."""

from __future__ import annotations

import json

from prism.cloud.catalog import DynamoCatalog
from prism.contract import REASON_LIMIT
from tests.lambdas.conftest import FakeContext
from tests.lambdas.test_discover import TABLE, env  # noqa: F401  (the moto fixture)

STARTED = "2030-01-01T00:00:00Z"


def batch_error(exit_code: int, status_reason: str = "Essential container in task exited") -> dict:
    """The Cause of ``States.TaskFailed`` from ``batch:submitJob.sync``: the Batch job description."""
    job = {"JobName": "prism-title", "Status": "FAILED", "StatusReason": status_reason,
           "Container": {"ExitCode": exit_code, "Reason": None}}  # fmt: skip
    return {"Error": "States.TaskFailed", "Cause": json.dumps(job)}


def record(error: dict) -> dict:
    import record_failure

    event = {"title_id": "T1", "job": "title", "stages": ["shots", "keyframes", "cues"],
             "source_uri": "s3://media-delivery/transcoded/T1.mp4", "error": error,
             "execution_started_at": STARTED}  # fmt: skip
    return record_failure.handler(event, FakeContext())


def test_the_workers_own_reason_for_exit_2_reaches_the_catalog(env):  # noqa: F811
    catalog: DynamoCatalog = env[1]
    catalog.put_job_failure("T1", "title", reason="configuration error (not retried): stage embeddings has no model "
                            "in this worker: /opt/prism/models/siglip missing", exit_code=2, execution="run-1",
                            at="2030-01-01T00:05:00+00:00")  # fmt: skip

    out = record(batch_error(2))

    assert "stage embeddings has no model in this worker" in out["reason"]
    assert "Essential container in task exited; exit code 2" in out["reason"]
    title = catalog.get_title("T1")
    assert title.status == "failed" and "/opt/prism/models/siglip missing" in title.reason
    stage = catalog.get_item("T1", "STAGE#shots")
    assert "stage embeddings has no model" in stage["reason"] and stage["retryable"] is True


def test_a_reason_from_an_earlier_run_is_not_used(env):  # noqa: F811
    catalog: DynamoCatalog = env[1]
    catalog.put_job_failure("T1", "title", reason="an old story", exit_code=2, execution="run-0",
                            at="2029-12-31T00:00:00+00:00")  # fmt: skip

    out = record(batch_error(2))

    assert "an old story" not in out["reason"] and "exit code 2" in out["reason"]


def test_failure_reasons_are_bounded(env):  # noqa: F811
    catalog: DynamoCatalog = env[1]
    out = record(batch_error(137, "OutOfMemoryError: " + "x" * 20_000))

    assert len(out["reason"]) <= REASON_LIMIT and out["reason"].endswith("[cut: the full reason is in the logs]")
    assert len(catalog.get_title("T1").reason) <= REASON_LIMIT
    assert len(catalog.get_item("T1", "STAGE#cues")["reason"]) <= REASON_LIMIT
