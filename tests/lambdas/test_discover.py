"""``discover`` on realistic input listings (moto S3 + the catalog table, no stack synthesis): which objects are
titles under each delivery layout, what a scheduled run takes first, failed titles retried then parked, and the
jobs' timeouts from each title's size."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws

from prism.catalog import TitleRecord
from prism.cloud.catalog import DynamoCatalog
from tests.lambdas.conftest import FakeContext
from tests.test_worker import create_catalog_table

REGION, INPUT, ARTIFACTS, TABLE, PREFIX = (
    "us-east-1",
    "media-delivery",
    "prism-artifacts",
    "prism-catalog",
    "transcoded/",
)
JOBS = {"title": {"stages": ["shots", "keyframes", "cues"], "requires": [], "timeout_minutes": 35}}


@pytest.fixture
def env(monkeypatch):
    values = {
        "PRISM_CATALOG_TABLE": TABLE, "PRISM_ARTIFACTS_BUCKET": ARTIFACTS, "PRISM_INPUT_BUCKET": INPUT,
        "PRISM_INPUT_PREFIX": PREFIX, "PRISM_PIPELINE_VERSION": "v1", "PRISM_WATERMARK_OVERLAP_S": "0",
        "PRISM_STAGE_GRAPH": json.dumps({"shots": [], "keyframes": ["shots"], "cues": []}),
        "PRISM_JOBS": json.dumps(JOBS), "PRISM_JOB_QUEUES": json.dumps({"scheduled": "q-scheduled"}),
        "PRISM_VIDEO_SUFFIXES": ".mp4,.mov,.mkv,.mxf", "PRISM_MAX_TITLES_PER_RUN": "100", "PRISM_MAX_ATTEMPTS": "3",
        "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_METRICS_NAMESPACE": "Prism",
    }  # fmt: skip
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (INPUT, ARTIFACTS):
            s3.create_bucket(Bucket=bucket)
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_catalog_table(ddb)
        yield s3, DynamoCatalog(TABLE, client=ddb), monkeypatch


def deliver(s3, keys: dict[str, int]) -> None:
    """Objects of the given sizes (sparse bodies are enough: discover reads only the listing)."""
    for key, size in keys.items():
        s3.put_object(Bucket=INPUT, Key=PREFIX + key, Body=b"\0" * size)


def run(s3, execution: str = "run-1", started_at: str | None = None) -> tuple[dict, list[dict], dict]:
    import discover

    started_at = started_at or datetime.now(UTC).isoformat()
    event = {"request": {"mode": "scheduled"}, "execution": execution, "started_at": started_at}
    out = discover.handler(event, FakeContext())
    items = json.loads(s3.get_object(Bucket=ARTIFACTS, Key=out["items_key"])["Body"].read())
    lists = json.loads(s3.get_object(Bucket=ARTIFACTS, Key=out["lists_key"])["Body"].read())
    return out, items, lists


def chosen(items: list[dict]) -> dict[str, str]:
    return {i["title_id"]: i["source_uri"].removeprefix(f"s3://{INPUT}/{PREFIX}") for i in items}


# -- delivery layouts ------------------------------------------------------------------------------------------

FLAT_RENDITIONS = {  # one folder, a file per rendition, sidecars beside them
    "MOV0001_2160p.mp4": 9, "MOV0001_1080p.mp4": 5, "MOV0001_720p.mp4": 3, "MOV0001_1080p.en.srt": 1,
    "MOV0001.xml": 1, "MOV0001_poster.jpg": 1,
    "Drama_S01E02_1080p.mp4": 6, "Drama_S01E02_720p.mp4": 4, "Drama_S01E02_ko.vtt": 1,
}  # fmt: skip
TITLE_FOLDERS = {  # a folder per title: the mezzanine, sidecars, and the packaged streams next to it
    "T100/video.mp4": 8, "T100/video.ko.vtt": 1, "T100/poster.jpg": 1, "T100/metadata.json": 1,
    "T100/hls/master.m3u8": 1, "T100/hls/1080p/playlist.m3u8": 1, "T100/hls/1080p/seg_00001.ts": 2,
    "T100/dash/manifest.mpd": 1, "T100/dash/init-stream0.m4s": 1, "T100/dash/chunk-stream0-00001.m4s": 2,
    "T100/cmaf/master.m3u8": 1, "T100/cmaf/init.mp4": 1, "T100/cmaf/segment_1.mp4": 2, "T100/cmaf/segment_2.mp4": 2,
    "T200/video.mp4": 7, "T200/hls/index.m3u8": 1, "T200/hls/seg-1.mp4": 2,
}  # fmt: skip
LOOSE_FILES = {  # the old rule: a file per title, anywhere under the prefix; segments and init files are not titles
    "Ep 1.mp4": 3, "archive/Ep 2.mov": 3, "Ep 1.srt": 1, "stream/init.mp4": 1, "stream/seg_00001.mp4": 1,
    "stream/chunk-stream0-00002.m4s": 1,
}  # fmt: skip


@pytest.mark.parametrize(("pattern", "listing", "expected"), [
    ("{title_id}_{rendition}.{ext}", FLAT_RENDITIONS,
     {"MOV0001": "MOV0001_2160p.mp4", "Drama_S01E02": "Drama_S01E02_1080p.mp4"}),
    ("{title_id}/{name}.{ext}", TITLE_FOLDERS, {"T100": "T100/video.mp4", "T200": "T200/video.mp4"}),
    (None, LOOSE_FILES, {"Ep-1": "Ep 1.mp4", "Ep-2": "archive/Ep 2.mov"}),
])  # fmt: skip
def test_each_delivery_layout_yields_one_title_per_delivery_and_its_best_rendition(env, pattern, listing, expected):
    s3, _, monkeypatch = env
    if pattern:
        monkeypatch.setenv("PRISM_DELIVERY", json.dumps({"pattern": pattern}))
    deliver(s3, listing)

    out, items, _ = run(s3)

    assert chosen(items) == expected
    assert out["count"] == len(expected)


def test_a_rendition_preference_list_overrides_the_highest_resolution(env):
    s3, _, monkeypatch = env
    monkeypatch.setenv("PRISM_DELIVERY", json.dumps({"pattern": "{title_id}_{rendition}.{ext}",
                                                     "renditions": ["1080p", "720p"]}))  # fmt: skip
    deliver(s3, FLAT_RENDITIONS)

    _, items, _ = run(s3)

    assert chosen(items) == {"MOV0001": "MOV0001_1080p.mp4", "Drama_S01E02": "Drama_S01E02_1080p.mp4"}


def test_delivery_patterns_are_checked():
    from prism.cloud.delivery import Delivery, DeliveryError

    for pattern, message in (("{name}.{ext}", "no {title_id}"), ("{title_id}/{size}.{ext}", "unknown field {size}"),
                             ("{title_id}_{title_id}.mp4", "appears twice")):  # fmt: skip
        with pytest.raises(DeliveryError, match=message):
            Delivery(pattern=pattern)


# -- priorities: new deliveries first, then retries, then the back catalogue -----------------------------------


def processed(catalog: DynamoCatalog, s3, title_id: str, key: str, version: str, status: str = "succeeded",
              retryable: bool | None = None) -> None:  # fmt: skip
    etag = s3.head_object(Bucket=INPUT, Key=PREFIX + key)["ETag"].strip('"')
    extra = {"source_etag": etag, "pipeline_version": version}
    if retryable is not None:
        extra["retryable"] = retryable
    catalog.put_title(TitleRecord(title_id, f"s3://{INPUT}/{PREFIX}{key}", 1, "sha", status,
                                  "a reason" if status == "failed" else None, "0.1", "2030-01-01"), extra=extra)  # fmt: skip


def test_after_a_version_bump_todays_deliveries_go_first_and_the_back_catalogue_fills_the_rest(env):
    """The old rule reset the watermark on a version bump and took the oldest titles first: new deliveries waited
    behind the whole back catalogue."""
    import time

    s3, catalog, monkeypatch = env
    back = {f"Old {i:02d}.mp4": 1 for i in range(10)}
    deliver(s3, back)
    for key in back:
        processed(catalog, s3, key.removesuffix(".mp4").replace(" ", "-"), key, "v1")
    catalog.put_run_watermark(datetime.now(UTC).isoformat(), "v1", "yesterday")  # yesterday's run took them all
    time.sleep(1.1)  # S3 times have whole seconds
    deliver(s3, {"New A.mp4": 1, "New B.mp4": 1})
    monkeypatch.setenv("PRISM_PIPELINE_VERSION", "v2")  # the version bump
    monkeypatch.setenv("PRISM_MAX_TITLES_PER_RUN", "5")

    out, items, _ = run(s3, "after-bump")

    assert [i["title_id"] for i in items] == ["New-A", "New-B", "Old-00", "Old-01", "Old-02"]
    assert out["deferred_count"] == 7
    complete(catalog, s3, items)

    out, items, _ = run(s3, "next-day")  # nothing new: the back catalogue goes on from where it stopped
    assert [i["title_id"] for i in items] == ["Old-03", "Old-04", "Old-05", "Old-06", "Old-07"]
    assert out["deferred_count"] == 4  # not yet examined: Old-08, Old-09, and New-A/B (found current next time)
    complete(catalog, s3, items)
    # this run dies with Old-08 and Old-09 in flight: their markers must not make the back catalogue pass for new
    out, items, lists = run(s3, "day-after")
    assert [i["title_id"] for i in items] == ["Old-08", "Old-09"] and out["deferred_count"] == 0
    assert sorted(lists["skipped"]) == ["New-A", "New-B"]
    time.sleep(1.1)
    deliver(s3, {"New C.mp4": 1})
    monkeypatch.setenv("PRISM_MAX_TITLES_PER_RUN", "2")
    out, items, lists = run(s3, "after-the-dead-run")
    assert [i["title_id"] for i in items] == ["New-C", "Old-08"] and out["deferred_count"] == 1  # then the retries


def complete(catalog, s3, items) -> None:
    """What a run's jobs, finalize and "Title completed" leave for each title it took."""
    for item in items:
        processed(catalog, s3, item["title_id"], item["source_uri"].split(PREFIX, 1)[1], "v2")
    catalog.delete_pending([i["title_id"] for i in items])


def test_a_title_failed_on_its_host_is_retried_then_parked_and_bad_input_is_not_retried(env):
    s3, catalog, monkeypatch = env
    deliver(s3, {"Flaky.mp4": 1, "Broken.mp4": 1})

    _, items, _ = run(s3, "run-1")
    assert sorted(chosen(items)) == ["Broken", "Flaky"]
    catalog.delete_pending(["Broken", "Flaky"])  # the state machine's "Title completed"
    processed(catalog, s3, "Flaky", "Flaky.mp4", "v1", "failed", retryable=True)  # e.g. Spot reclaimed 3 times
    processed(catalog, s3, "Broken", "Broken.mp4", "v1", "failed", retryable=False)  # the worker: not a video

    for attempt in (2, 3):
        _, items, lists = run(s3, f"run-{attempt}")
        assert chosen(items) == {"Flaky": "Flaky.mp4"} and lists["parked"] == []
        assert catalog.attempts()["Flaky"]["attempts"] == attempt
        catalog.delete_pending(["Flaky"])

    out, items, lists = run(s3, "run-4")
    assert items == [] and out["parked_count"] == 1
    assert lists["parked"] == [{"title_id": "Flaky", "attempts": 3, "reason": "a reason"}]
    assert "Broken" not in catalog.attempts()

    processed(catalog, s3, "Flaky", "Flaky.mp4", "v1", "succeeded")  # an operator's manual run fixed it
    out, items, lists = run(s3, "run-5")
    assert items == [] and lists["parked"] == [] and catalog.attempts() == {}


def test_job_timeouts_follow_each_titles_size(env):
    s3, _, monkeypatch = env
    monkeypatch.setenv("PRISM_DELIVERY", json.dumps({"min_bitrate_kbps": 1}))  # 125 bytes a second
    deliver(s3, {"Short.mp4": 10, "Feature.mp4": 125 * 7_200, "Epic.mp4": 125 * 4 * 7_200})  # 0.1 s, 2 h, 8 h

    _, items, _ = run(s3)

    timeouts = {i["title_id"]: i["jobs"]["title"]["timeout_s"] for i in items}
    reference = 35 * 60
    assert timeouts["Feature"] == pytest.approx(reference, abs=2)  # the 2 h title the job is sized on
    assert timeouts["Short"] == pytest.approx(0.3 * reference, abs=5)  # start-up dominated: the fixed part
    assert timeouts["Epic"] == 3 * reference  # 8 h capped at three times the reference


def test_parked_titles_are_listed_in_the_run_summary(env):
    import summarise

    s3, catalog, _ = env
    parked = [{"title_id": "Flaky", "attempts": 3, "reason": "Flaky: job title failed: Host EC2 terminated"}]
    key = "_prism/runs/run-9/discovery.json"
    s3.put_object(Bucket=ARTIFACTS, Key=key, Body=json.dumps({"skipped": [], "not_found": [], "deferred": 4,
                                                             "parked": parked}).encode())  # fmt: skip

    out = summarise.handler({"discovery": {"mode": "scheduled", "lists_key": key}, "results": []}, FakeContext())

    assert out["parked"] == parked and out["parked_count"] == 1 and out["deferred"] == 4
    full = json.loads(s3.get_object(Bucket=ARTIFACTS, Key="_prism/runs/run-9/summary.json")["Body"].read())
    assert full["parked"] == parked
