"""The synthesized state machine, executed by moto's Step Functions interpreter (see conftest.py)."""

from __future__ import annotations

import json

import pytest

from prism.cloud.catalog import DynamoCatalog
from prism.synth import Shot, Title, build_title

INPUT_BUCKET, PREFIX = "media-delivery-dev", "transcoded/"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("delivered")
    made = {}
    for name, shots in (("Ep 1", ["orange", "blue"]), ("Ep 2", ["blue", "orange"])):
        path = root / f"{name}.mp4"
        build_title(Title(shots=[Shot(s, 1.0) for s in shots], width=160, height=90, black_after={0: 0.6}), path)
        made[name] = path
    return made


def deliver(d, videos, *names, broken=()):
    d.s3.create_bucket(Bucket=INPUT_BUCKET) if INPUT_BUCKET not in [b["Name"] for b in d.s3.list_buckets()["Buckets"]] else None
    for name in names:
        d.s3.upload_file(str(videos[name]), INPUT_BUCKET, f"{PREFIX}{name}.mp4")
    for name in broken:
        d.s3.put_object(Bucket=INPUT_BUCKET, Key=f"{PREFIX}{name}.mp4", Body=b"not a video at all")
    d.s3.put_object(Bucket=INPUT_BUCKET, Key=f"{PREFIX}notes.txt", Body=b"ignored: not a video")


def manifest(d, title_id):
    return json.loads(d.s3.get_object(Bucket=d.artifacts, Key=f"titles/{title_id}/manifest.json")["Body"].read())


def test_definition_under_test_is_the_synthesized_one(deployment):
    asl = json.loads(deployment.definition)
    assert asl["States"]["Titles"]["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert "arn:aws:lambda:us-east-1:123456789012:function:" in deployment.definition


def test_scheduled_run_processes_new_titles_and_a_second_run_skips_them(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1", "Ep 2")

    first = d.start({"mode": "scheduled"})

    assert sorted(first["succeeded"]) == ["Ep-1", "Ep-2"] and first["failed"] == [] and first["skipped"] == []
    assert sorted(d.worker_runs) == [("Ep-1", "cues", "succeeded"), ("Ep-2", "cues", "succeeded")]
    catalog = DynamoCatalog(d.table, client=d.ddb)
    for title_id in ("Ep-1", "Ep-2"):
        doc = manifest(d, title_id)
        assert doc["stages"]["cues"]["status"] == "succeeded"
        assert doc["source"]["uri"] == f"s3://{INPUT_BUCKET}/{PREFIX}{title_id.replace('-', ' ')}.mp4"
        from prism.artifacts import validate_manifest

        validate_manifest(doc)
        keys = {o["Key"] for o in d.s3.list_objects_v2(Bucket=d.artifacts, Prefix=f"titles/{title_id}/")["Contents"]}
        assert keys == {f"titles/{title_id}/manifest.json", f"titles/{title_id}/cues.parquet"}
        title = catalog.get_title(title_id)
        assert title.status == "succeeded" and title.reason is None
        assert catalog.get_item(title_id, "TITLE")["pipeline_version"] == "dev"
    assert catalog.run_watermark()["pipeline_version"] == "dev"

    d.worker_runs.clear()
    second = d.start({"mode": "scheduled"})

    assert sorted(second["skipped"]) == ["Ep-1", "Ep-2"] and second["succeeded"] == [] and second["failed"] == []
    assert d.worker_runs == []


def test_manual_run_with_force_redoes_one_stage_of_one_title(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1", "Ep 2")
    d.start({"mode": "scheduled"})
    catalog = DynamoCatalog(d.table, client=d.ddb)
    before = {t: catalog.get_stage(t, "cues") for t in ("Ep-1", "Ep-2")}
    d.worker_runs.clear()

    unforced = d.start({"mode": "manual", "titles": ["Ep-1"], "stages": ["cues"], "force": False})
    assert unforced["succeeded"] == ["Ep-1"]
    assert d.worker_runs == [("Ep-1", "cues", "skipped")]  # up to date: the job is a no-op
    assert catalog.get_stage("Ep-1", "cues") == before["Ep-1"]

    d.worker_runs.clear()
    forced = d.start({"mode": "manual", "titles": ["Ep-1"], "stages": ["cues"], "force": True})

    assert forced["succeeded"] == ["Ep-1"] and forced["mode"] == "manual"
    assert d.worker_runs == [("Ep-1", "cues", "succeeded")]
    redone = catalog.get_stage("Ep-1", "cues")
    assert redone.finished_at > before["Ep-1"].finished_at and redone.fingerprint == before["Ep-1"].fingerprint
    assert catalog.get_stage("Ep-2", "cues") == before["Ep-2"]  # the other title untouched
    assert manifest(d, "Ep-1")["stages"]["cues"]["finished_at"] == redone.finished_at


def test_a_failing_title_is_recorded_with_its_reason_while_the_other_succeeds(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1", broken=["Broken"])

    out = d.start({"mode": "scheduled"})

    assert out["succeeded"] == ["Ep-1"]
    (failed,) = out["failed"]
    assert failed["title_id"] == "Broken" and out["counts"] == {"succeeded": 1, "failed": 1, "skipped": 0, "not_found": 0}
    assert "Broken.mp4" in failed["reason"]
    catalog = DynamoCatalog(d.table, client=d.ddb)
    stage = catalog.get_stage("Broken", "cues")
    assert stage.status == "failed" and stage.reason == failed["reason"]
    title = catalog.get_title("Broken")
    assert title.status == "failed" and title.reason == failed["reason"]
    doc = manifest(d, "Broken")
    assert doc["stages"]["cues"]["status"] == "failed" and doc["stages"]["cues"]["outputs"] == []
    assert catalog.get_title("Ep-1").status == "succeeded"


def test_manual_run_reports_unknown_titles(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1")

    out = d.start({"mode": "manual", "titles": ["No-Such-Title"], "stages": ["cues"]})

    assert out["not_found"] == ["No-Such-Title"] and out["succeeded"] == [] and out["failed"] == []
