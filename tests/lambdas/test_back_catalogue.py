"""A back-catalogue: 100,000 delivered keys through the synthesized state machine in moto.

Step Functions fails a state whose input or output passes 256 KiB; moto does not enforce it, so
the test measures every state's input and output in the execution history.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from prism.catalog import TitleRecord
from prism.cloud.catalog import DynamoCatalog
from tests.lambdas.conftest import ACCOUNT, REGION

INPUT_BUCKET, PREFIX = "media-delivery-dev", "transcoded/archive/"
LISTED, PROCESSED, CAP = 100_000, 20_000, 3
PAYLOAD_LIMIT = 256 * 1024


def title(i: int) -> str:
    return f"Title-{i:06d}"


def deliver_back_catalogue(d) -> None:
    """100,000 deliveries, oldest first; the first 20,000 already processed by this pipeline version."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.s3.models import s3_backends

    d.s3.create_bucket(Bucket=INPUT_BUCKET)
    s3 = s3_backends[ACCOUNT]["global"]  # 100,000 PUTs through the HTTP layer would take minutes
    etag = None
    for i in range(LISTED):
        etag = s3.put_object(INPUT_BUCKET, f"{PREFIX}Title {i:06d}.mp4", b"not a video").etag.strip('"')
    table = dynamodb_backends[ACCOUNT][REGION].get_table(d.table)
    for i in range(PROCESSED):
        table.put_item({"title_id": {"S": title(i)}, "record": {"S": "TITLE"}, "source_etag": {"S": etag},
                        "pipeline_version": {"S": d.lambda_env["PRISM_PIPELINE_VERSION"]}})  # fmt: skip


def state_payload_sizes(d) -> dict[str, int]:
    """The largest input/output of each state in the run's history, in bytes."""
    (execution,) = d.sfn.list_executions(stateMachineArn=d.machine_arn)["executions"]
    sizes: dict[str, int] = {}
    kwargs = {"executionArn": execution["executionArn"], "maxResults": 1000}
    while True:
        page = d.sfn.get_execution_history(**kwargs)
        for event in page["events"]:
            for detail in (v for k, v in event.items() if k.endswith("EventDetails") and isinstance(v, dict)):
                for field in ("input", "output"):
                    if isinstance(detail.get(field), str):
                        name = detail.get("name") or event["type"]
                        sizes[name] = max(sizes.get(name, 0), len(detail[field].encode()))
        if not page.get("nextToken"):
            return sizes
        kwargs["nextToken"] = page["nextToken"]


@pytest.mark.slow
def test_a_capped_run_over_100000_listed_keys_stays_within_the_payload_limit(deployment, monkeypatch):
    d = deployment
    deliver_back_catalogue(d)
    monkeypatch.setenv("PRISM_MAX_TITLES_PER_RUN", str(CAP))

    out = d.start({"mode": "scheduled"}, timeout_s=900)

    # The oldest titles not yet processed, each recorded with the worker's own reason (they are not videos).
    taken = [title(i) for i in range(PROCESSED, PROCESSED + CAP)]
    assert out["succeeded"] == [] and [f["title_id"] for f in out["failed"]] == taken
    assert all(f"Title {f['title_id'][-6:]}.mp4" in f["reason"] for f in out["failed"])
    assert out["counts"] == {"succeeded": 0, "failed": CAP, "skipped": PROCESSED, "not_found": 0}
    assert out["deferred"] == LISTED - PROCESSED - CAP
    assert out["skipped"] == [title(i) for i in range(100)] and out["truncated"] is True
    # Nothing that grows with the catalogue went through the state; the full lists are in S3.
    sizes = state_payload_sizes(d)
    assert sizes and max(sizes.values()) < 16 * 1024, sizes
    bucket, key = out["summary_uri"].removeprefix("s3://").split("/", 1)
    full = json.loads(d.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert full["skipped"] == [title(i) for i in range(PROCESSED)]
    assert len(json.dumps(full["skipped"]).encode()) > PAYLOAD_LIMIT  # what used to travel inline
    # Every title the run took completed, so no pending marker holds the watermark back: it stands at the
    # first title left for the next run.
    catalog = DynamoCatalog(d.table, client=d.ddb)
    assert catalog.pending() == {}
    first_left = d.s3.head_object(Bucket=INPUT_BUCKET, Key=f"{PREFIX}Title {PROCESSED + CAP:06d}.mp4")["LastModified"]
    assert datetime.fromisoformat(catalog.run_watermark()["listed_through"]) == first_left


def test_a_title_a_dead_run_left_pending_holds_the_watermark_back(deployment, monkeypatch):
    """The watermark advances per completed title: a run that died leaves markers, and the next run lists from
    the oldest one instead of from where that run's listing stopped."""
    import discover

    from tests.lambdas.conftest import FakeContext

    d = deployment
    d.s3.create_bucket(Bucket=INPUT_BUCKET)
    d.s3.put_object(Bucket=INPUT_BUCKET, Key=f"{PREFIX}Lost.mp4", Body=b"x")
    delivered = d.s3.head_object(Bucket=INPUT_BUCKET, Key=f"{PREFIX}Lost.mp4")["LastModified"]
    monkeypatch.setenv("PRISM_WATERMARK_OVERLAP_S", "0")
    catalog = DynamoCatalog(d.table, client=d.ddb)
    version = d.lambda_env["PRISM_PIPELINE_VERSION"]
    catalog.put_run_watermark("2100-01-01T00:00:00+00:00", version, "dead-run")  # listed far past it
    catalog.put_pending({"Lost": delivered.isoformat(), "Gone": "2000-01-01T00:00:00+00:00"}, "dead-run")

    def run(name):
        event = {"request": {"mode": "scheduled"}, "execution": name, "started_at": "2100-01-02T00:00:00Z"}
        out = discover.handler(event, FakeContext())
        return [
            i["title_id"] for i in json.loads(d.s3.get_object(Bucket=d.artifacts, Key=out["items_key"])["Body"].read())
        ]

    assert run("next-run") == ["Lost"]
    assert set(catalog.pending()) == {"Lost"}  # "Gone" is no longer delivered: its marker no longer holds anything
    # what finalize and then the state machine's "Title completed" do (a title with no record is retried)
    etag = d.s3.head_object(Bucket=INPUT_BUCKET, Key=f"{PREFIX}Lost.mp4")["ETag"].strip('"')
    catalog.put_title(TitleRecord("Lost", f"s3://{INPUT_BUCKET}/{PREFIX}Lost.mp4", 1, "sha", "succeeded", None, "0.1",
                                  "2100-01-01"), extra={"source_etag": etag, "pipeline_version": version})  # fmt: skip
    catalog.delete_pending(["Lost"])
    assert run("later-run") == []  # now the watermark (the last run's start) rules
