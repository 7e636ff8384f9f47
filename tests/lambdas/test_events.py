"""Every event the lambdas emit validates against its JSON Schema (prism/schemas/events/, the registry's copy)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from prism.artifacts import EVENT_SCHEMAS, event_schema
from prism.contract import EVENT_SOURCE, TITLE_FAILED, TITLE_PREPROCESSED
from tests.lambdas.test_finalize import KEYFRAMES, TITLE, finalize, stored_keyframes


@pytest.fixture
def emitted(deployment, monkeypatch):
    """The entries the lambdas hand to PutEvents, as EventBridge would deliver them (detail parsed)."""
    import _shared

    sent: list[dict] = []
    original = _shared.Aws.events.func

    def client(self):
        events = original(self)
        real = events.put_events

        def put_events(Entries):
            sent.extend({"source": e["Source"], "detail-type": e["DetailType"], "detail": json.loads(e["Detail"])}
                        for e in Entries)  # fmt: skip
            return real(Entries=Entries)

        events.put_events = put_events
        return events

    monkeypatch.setattr(_shared.Aws, "events", property(client))
    return sent


def _valid(event: dict) -> None:
    jsonschema.Draft4Validator.check_schema(event_schema(event["detail-type"]))
    jsonschema.Draft4Validator(event_schema(event["detail-type"])).validate(event)


def test_finalize_events_validate(deployment, emitted):
    stored_keyframes(deployment, ["keyframes.parquet", *KEYFRAMES])
    finalize(deployment)
    stored_keyframes(deployment, ["keyframes.parquet"])  # the listing now misses keyframes: the title fails
    deployment.s3.delete_object(Bucket=deployment.artifacts, Key=f"titles/{TITLE}/{KEYFRAMES[0]}")
    finalize(deployment)
    assert [e["detail-type"] for e in emitted] == [TITLE_PREPROCESSED, TITLE_FAILED]
    for event in emitted:
        assert event["source"] == EVENT_SOURCE
        _valid(event)


def test_record_failure_event_validates(deployment, emitted):
    """A title whose finalize itself failed: record_failure emits its Title Failed event."""
    import record_failure as handler_module

    from tests.lambdas.conftest import FakeContext

    handler_module.handler(
        {"title_id": TITLE, "job": "finalize", "error": {"Error": "Lambda.Unknown", "Cause": "boom"}, "final": True},
        FakeContext(),
    )
    assert [e["detail-type"] for e in emitted] == [TITLE_FAILED]
    _valid(emitted[0])
    assert "boom" in emitted[0]["detail"]["reason"]


def test_schemas_reject_what_consumers_could_not_use():
    good = {"source": "prism", "detail-type": TITLE_PREPROCESSED,
            "detail": {"title_id": "t", "status": "succeeded", "reason": None, "stages": {"shots": "succeeded"},
                       "manifest": "s3://b/titles/t/manifest.json", "pipeline_version": "1", "execution": "e"}}  # fmt: skip
    _valid(good)
    _valid({**good, "detail": {**good["detail"], "qc": {"verdict": "warn", "profile": "service", "counts": {"warn": 2},
                                                       "rules": {"black_in_programme": 2},
                                                       "qc": "s3://b/titles/t/qc.json"}}})  # fmt: skip
    for broken in (
        {
            **good,
            "detail": {
                **good["detail"],
                "qc": {"verdict": "maybe", "profile": "service", "counts": {}, "qc": "s3://b/titles/t/qc.json"},
            },
        },  # fmt: skip
        {**good, "detail": {**good["detail"], "status": "failed"}},
        {**good, "detail": {k: v for k, v in good["detail"].items() if k != "manifest"}},
        {**good, "detail": {**good["detail"], "stages": {"shots": "great"}}},
        {**good, "detail": {**good["detail"], "title_id": ""}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _valid(broken)
    assert set(EVENT_SCHEMAS) == {TITLE_PREPROCESSED, TITLE_FAILED}
