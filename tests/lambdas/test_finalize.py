"""``finalize`` checks a title's files with one listing, never a HeadObject per file (see ``existing_keys``)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from prism.catalog import StageRecord
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.s3 import ListingDenied

TITLE = "Long-Title"
KEYFRAMES = [f"keyframes/{i:05d}.jpg" for i in range(1_100)]  # a 2-hour title has thousands: more than one page


@pytest.fixture
def s3_calls(deployment, monkeypatch):
    """Count S3 calls finalize makes; HeadObject answers 403 as it does without an unconditional ListBucket."""
    import _shared

    calls: dict[str, int] = {}
    deny: set[str] = {"HeadObject"}

    def hook(model, params, **_):
        calls[model.name] = calls.get(model.name, 0) + 1
        if model.name in deny:
            raise ClientError({"Error": {"Code": "AccessDenied" if model.name != "HeadObject" else "403",
                                         "Message": "Forbidden"}}, model.name)  # fmt: skip

    original = _shared.Aws.s3.func

    def client(self):
        s3 = original(self)
        s3.meta.events.register("before-call.s3.*", hook)
        return s3

    monkeypatch.setattr(_shared.Aws, "s3", property(client))
    return calls, deny


def stored_keyframes(d, outputs: list[str]) -> None:
    catalog = DynamoCatalog(d.table, client=d.ddb)
    catalog.put_stage(StageRecord(TITLE, "keyframes", "succeeded", None, None, None, "p", "fp", "sha",
                                  "2030-01-01T00:00:00+00:00", "2030-01-01T00:01:00+00:00", 60.0, "test",
                                  ["keyframes.parquet", *KEYFRAMES]))  # fmt: skip
    for rel in outputs:
        d.s3.put_object(Bucket=d.artifacts, Key=f"titles/{TITLE}/{rel}", Body=b"x")


def finalize(d):
    import finalize as handler_module

    from tests.lambdas.conftest import FakeContext

    event = {"title_id": TITLE, "source_uri": "s3://media-delivery-dev/transcoded/Long Title.mp4",
             "source_etag": "etag", "stages": ["keyframes"], "execution": "run-1"}  # fmt: skip
    return handler_module.handler(event, FakeContext())


def test_all_files_present_is_one_listing_per_page_and_no_head_requests(deployment, s3_calls):
    d = deployment
    calls, _ = s3_calls
    stored_keyframes(d, ["keyframes.parquet", *KEYFRAMES])

    out = finalize(d)

    assert out == {"title_id": TITLE, "status": "succeeded", "reason": None}
    assert calls.get("HeadObject", 0) == 0
    assert calls["ListObjectsV2"] == 2  # 1,101 keys: two pages of at most 1,000
    manifest = json.loads(d.s3.get_object(Bucket=d.artifacts, Key=f"titles/{TITLE}/manifest.json")["Body"].read())
    assert manifest["stages"]["keyframes"]["status"] == "succeeded"


def test_a_missing_file_fails_the_stage_naming_it(deployment, s3_calls):
    d = deployment
    stored_keyframes(d, ["keyframes.parquet", *KEYFRAMES[:-1]])

    out = finalize(d)

    assert out["status"] == "failed"
    assert out["reason"] == f"{TITLE}: stage keyframes outputs missing in S3: ['{KEYFRAMES[-1]}']"


def test_a_denied_listing_is_a_clear_configuration_error(deployment, s3_calls, caplog):
    d = deployment
    _, deny = s3_calls
    deny.add("ListObjectsV2")
    stored_keyframes(d, ["keyframes.parquet"])

    with pytest.raises(ListingDenied, match=rf"cannot list s3://{d.artifacts}/titles/{TITLE}/ \(AccessDenied\)"):
        finalize(d)
    assert "Caught exception in event_parser" in caplog.text  # Powertools logs it; the state machine's catch records it
    caplog.clear()


def test_stage_duration_metric_has_the_dimensions_the_dashboard_reads(
    deployment, s3_calls, test_template, capsys, monkeypatch
):
    """Powertools adds ``service`` to single_metric's dimensions; a widget without it graphs nothing."""
    d = deployment
    (function,) = [r["Properties"] for r in test_template["Resources"].values()
                   if r["Type"] == "AWS::Lambda::Function" and r["Properties"]["Handler"] == "finalize.handler"]  # fmt: skip
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", function["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"])
    stored_keyframes(d, ["keyframes.parquet", *KEYFRAMES])
    capsys.readouterr()

    finalize(d)

    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"StageDuration"' in line]
    (metric,) = [m for m in emf if m.get("_aws")]
    (dimensions,) = metric["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    published = ("Prism", "StageDuration", frozenset((name, metric[name]) for name in dimensions))
    (dashboard,) = [r for r in test_template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    body = json.loads(
        "".join(p if isinstance(p, str) else "REF" for p in dashboard["Properties"]["DashboardBody"]["Fn::Join"][1])
    )
    graphed = {(m[0], m[1], frozenset(zip(m[2:-1:2], m[3:-1:2], strict=True)))
               for w in body["widgets"] for m in w["properties"].get("metrics", [])}  # fmt: skip
    assert published in graphed, (published, graphed)


def test_an_event_bridge_entry_that_failed_fails_finalize(deployment, s3_calls, monkeypatch, caplog):
    """PutEvents answers 200 with FailedEntryCount; ignoring it loses the title's event silently."""
    import _shared

    class Events:
        def put_events(self, Entries):
            return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}]}

    monkeypatch.setattr(_shared.Aws, "events", property(lambda self: Events()))
    stored_keyframes(deployment, ["keyframes.parquet", *KEYFRAMES])

    with pytest.raises(
        _shared.EventNotDelivered, match=rf"{TITLE}: Title Preprocessed event not delivered .*InternalFailure"
    ):
        finalize(deployment)
    caplog.clear()


def test_stale_and_blocked_entries_are_read_by_their_status(deployment, s3_calls):
    """A stale dependent of another job is carried into the manifest without failing this run's title;
    a stage of this run recorded ``blocked`` fails it with its reason (a status, not a reason prefix)."""
    from prism.artifacts import StageEntry, blocked_reason

    d = deployment
    catalog = DynamoCatalog(d.table, client=d.ddb)
    stored_keyframes(d, ["keyframes.parquet", *KEYFRAMES])
    stale = StageEntry("stale", "stage(s) ['keyframes'] it requires changed since it ran; run embeddings again",
                       model={"name": "clip", "version": "1"}, fingerprint="old", outputs=["embeddings.parquet"],
                       finished_at="2030-01-01T00:02:00+00:00")  # fmt: skip
    catalog.put_stage(stale.to_record(TITLE, "embeddings", "sha", "test"),
                      extra={"manifest_entry": json.dumps(stale.to_manifest())})  # fmt: skip

    assert finalize(d) == {"title_id": TITLE, "status": "succeeded", "reason": None}
    manifest = json.loads(d.s3.get_object(Bucket=d.artifacts, Key=f"titles/{TITLE}/manifest.json")["Body"].read())
    assert manifest["stages"]["embeddings"]["status"] == "stale"
    assert manifest["stages"]["embeddings"]["outputs"] == ["embeddings.parquet"]

    why = blocked_reason(["shots"])
    blocked = StageEntry("blocked", why, finished_at="2030-01-01T00:03:00+00:00")
    catalog.put_stage(blocked.to_record(TITLE, "keyframes", "sha", "test"))

    assert finalize(d) == {"title_id": TITLE, "status": "failed", "reason": why}
    manifest = json.loads(d.s3.get_object(Bucket=d.artifacts, Key=f"titles/{TITLE}/manifest.json")["Body"].read())
    assert (manifest["stages"]["keyframes"]["status"], manifest["stages"]["keyframes"]["outputs"]) == ("blocked", [])


def test_a_new_title_gets_its_first_manifest_though_s3_answers_403_for_it(deployment):
    """S3 answers finalize's GetObject of a manifest not written yet with 403 (its ListBucket is conditioned on
    s3:prefix): finalize decides from its listing, or every new title would be recorded failed."""
    d = deployment
    (finalize_role,) = {d.function_roles["finalize"]}
    with pytest.raises(ClientError) as denied:
        d.s3_as.client(finalize_role).get_object(Bucket=d.artifacts, Key=f"titles/{TITLE}/manifest.json")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    stored_keyframes(d, ["keyframes.parquet", *KEYFRAMES])

    assert finalize(d) == {"title_id": TITLE, "status": "succeeded", "reason": None}
    manifest = json.loads(d.s3.get_object(Bucket=d.artifacts, Key=f"titles/{TITLE}/manifest.json")["Body"].read())
    assert manifest["title_id"] == TITLE and manifest["stages"]["keyframes"]["status"] == "succeeded"
    assert finalize(d)["status"] == "succeeded"  # and the second time it reads the manifest it wrote


def test_the_s3_double_says_no_such_key_only_to_an_unconditional_list_bucket(deployment):
    d = deployment
    key = f"titles/{TITLE}/manifest.json"
    d.s3_as.policies["Lister"] = [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{d.artifacts}"}
    ]
    d.s3_as.policies["PrefixLister"] = [{**d.s3_as.policies["Lister"][0],
                                         "Condition": {"StringLike": {"s3:prefix": ["titles/*"]}}}]  # fmt: skip
    with pytest.raises(d.s3.exceptions.NoSuchKey):
        d.s3_as.client("Lister").get_object(Bucket=d.artifacts, Key=key)
    for role in ("PrefixLister", "NoPolicy"):
        with pytest.raises(ClientError) as denied:
            d.s3_as.client(role).head_object(Bucket=d.artifacts, Key=key)
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    d.s3.put_object(Bucket=d.artifacts, Key=key, Body=b"{}")
    assert d.s3_as.client("NoPolicy").get_object(Bucket=d.artifacts, Key=key)["Body"].read() == b"{}"
