"""The synthesized state machine, executed by moto's Step Functions interpreter (see conftest.py)."""

from __future__ import annotations

import json

import pytest

from prism.cloud.catalog import DynamoCatalog
from prism.synth import Shot, Title, build_title

INPUT_BUCKET, PREFIX = "media-delivery-dev", "transcoded/"
VISUAL = ("shots", "keyframes", "cues")  # the test deployment's one job (conftest.py)


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
    d.s3.create_bucket(Bucket=INPUT_BUCKET) if INPUT_BUCKET not in [
        b["Name"] for b in d.s3.list_buckets()["Buckets"]
    ] else None
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


@pytest.mark.slow
def test_scheduled_run_processes_new_titles_and_a_second_run_skips_them(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1", "Ep 2")

    first = d.start({"mode": "scheduled"})

    assert sorted(first["succeeded"]) == ["Ep-1", "Ep-2"] and first["failed"] == [] and first["skipped"] == []
    # one job per title runs the whole group: one download, one decode, a record per stage
    assert sorted(d.jobs_run) == [("Ep-1", "visual", ",".join(VISUAL)), ("Ep-2", "visual", ",".join(VISUAL))]
    assert sorted(d.worker_runs) == sorted((t, s, "succeeded") for t in ("Ep-1", "Ep-2") for s in VISUAL)
    catalog = DynamoCatalog(d.table, client=d.ddb)
    for title_id in ("Ep-1", "Ep-2"):
        doc = manifest(d, title_id)
        assert {name: e["status"] for name, e in doc["stages"].items()} == dict.fromkeys(VISUAL, "succeeded")
        assert doc["source"]["uri"] == f"s3://{INPUT_BUCKET}/{PREFIX}{title_id.replace('-', ' ')}.mp4"
        from prism.artifacts import validate_manifest

        validate_manifest(doc)
        keys = {o["Key"] for o in d.s3.list_objects_v2(Bucket=d.artifacts, Prefix=f"titles/{title_id}/")["Contents"]}
        outputs = {f"titles/{title_id}/{rel}" for s in VISUAL for rel in catalog.get_stage(title_id, s).outputs}
        assert {f"titles/{title_id}/{s}.parquet" for s in VISUAL} <= outputs
        assert keys == {f"titles/{title_id}/manifest.json"} | outputs
        title = catalog.get_title(title_id)
        assert title.status == "succeeded" and title.reason is None
        assert catalog.get_item(title_id, "TITLE")["pipeline_version"] == "dev"
    assert catalog.run_watermark()["pipeline_version"] == "dev"

    d.worker_runs.clear()
    d.jobs_run.clear()
    second = d.start({"mode": "scheduled"})

    assert sorted(second["skipped"]) == ["Ep-1", "Ep-2"] and second["succeeded"] == [] and second["failed"] == []
    assert d.worker_runs == [] and d.jobs_run == []


@pytest.mark.slow
def test_manual_run_with_force_redoes_one_stage_of_one_title(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1", "Ep 2")
    d.start({"mode": "scheduled"})
    catalog = DynamoCatalog(d.table, client=d.ddb)
    before = {t: catalog.get_stage(t, "cues") for t in ("Ep-1", "Ep-2")}
    visual_before = {s: catalog.get_stage("Ep-1", s) for s in ("shots", "keyframes")}
    d.worker_runs.clear()
    d.jobs_run.clear()

    unforced = d.start({"mode": "manual", "titles": ["Ep-1"], "stages": ["cues"], "force": False})
    assert unforced["succeeded"] == ["Ep-1"]
    assert d.jobs_run == [("Ep-1", "visual", "cues")]  # the visual job, asked for cues only
    assert d.worker_runs == [("Ep-1", "cues", "skipped")]  # up to date: the job is a no-op
    assert catalog.get_stage("Ep-1", "cues") == before["Ep-1"]

    d.worker_runs.clear()
    d.jobs_run.clear()
    forced = d.start({"mode": "manual", "titles": ["Ep-1"], "stages": ["cues"], "force": True})

    assert forced["succeeded"] == ["Ep-1"] and forced["mode"] == "manual"
    assert d.jobs_run == [("Ep-1", "visual", "cues")]
    assert d.worker_runs == [("Ep-1", "cues", "succeeded")]  # shots and keyframes, same job, not rerun
    assert {s: catalog.get_stage("Ep-1", s) for s in ("shots", "keyframes")} == visual_before
    redone = catalog.get_stage("Ep-1", "cues")
    assert redone.finished_at > before["Ep-1"].finished_at and redone.fingerprint == before["Ep-1"].fingerprint
    assert catalog.get_stage("Ep-2", "cues") == before["Ep-2"]  # the other title untouched
    doc = manifest(d, "Ep-1")
    assert doc["stages"]["cues"]["finished_at"] == redone.finished_at
    assert doc["stages"]["shots"]["finished_at"] == visual_before["shots"].finished_at


def test_a_failing_title_is_recorded_with_its_reason_while_the_other_succeeds(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1", broken=["Broken"])

    out = d.start({"mode": "scheduled"})

    assert out["succeeded"] == ["Ep-1"]
    (failed,) = out["failed"]
    assert failed["title_id"] == "Broken" and out["counts"] == {
        "succeeded": 1,
        "failed": 1,
        "skipped": 0,
        "not_found": 0,
    }
    assert "Broken.mp4" in failed["reason"]
    catalog = DynamoCatalog(d.table, client=d.ddb)
    for name in VISUAL:  # every stage of the failed job, with the worker's own reason
        stage = catalog.get_stage("Broken", name)
        assert stage.status == "failed" and stage.reason == failed["reason"]
    title = catalog.get_title("Broken")
    assert title.status == "failed" and title.reason == failed["reason"]
    doc = manifest(d, "Broken")
    for name in VISUAL:
        assert doc["stages"][name]["status"] == "failed" and doc["stages"][name]["outputs"] == []
    assert catalog.get_title("Ep-1").status == "succeeded"


def run_items(d) -> list[dict]:
    """The item list discover wrote for the (one) run so far."""
    keys = [o["Key"] for o in d.s3.list_objects_v2(Bucket=d.artifacts, Prefix="_prism/runs/")["Contents"]]
    (key,) = [k for k in keys if k.endswith("/titles.json")]
    return json.loads(d.s3.get_object(Bucket=d.artifacts, Key=key)["Body"].read())


def test_a_manual_run_carries_language_hints_to_its_titles(deployment, videos, monkeypatch):
    """A run's hint per title, else the run's, else the environment's (discover's PRISM_LANGUAGE_HINT)."""
    d = deployment
    deliver(d, videos, "Ep 1", "Ep 2")
    monkeypatch.setenv("PRISM_LANGUAGE_HINT", "ko")

    out = d.start({"mode": "manual", "titles": ["Ep-1", "Ep-2"], "stages": ["cues"], "language_hints": {"Ep-2": "en"}})

    assert sorted(out["succeeded"]) == ["Ep-1", "Ep-2"]
    assert {i["title_id"]: i["language_hint"] for i in run_items(d)} == {"Ep-1": "ko", "Ep-2": "en"}


@pytest.mark.parametrize("request_", [
    {"mode": "manual", "titles": ["Ep-1"], "language": "Korean"},
    {"mode": "manual", "titles": ["Ep-1"], "language_hints": {"Ep-1": "ko-KR"}},
    {"mode": "manual", "titles": ["Ep-1"], "language_hints": {"Ep-9": "ko"}},
    {"mode": "scheduled", "language": "ko"},
])  # fmt: skip
def test_a_run_request_with_a_bad_language_hint_is_refused(request_):
    from discover import RunRequest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RunRequest.model_validate(request_)
    assert RunRequest.model_validate({"mode": "manual", "titles": ["Ep-1"], "language": "ko"}).language == "ko"


def test_manual_run_reports_unknown_titles(deployment, videos):
    d = deployment
    deliver(d, videos, "Ep 1")

    out = d.start({"mode": "manual", "titles": ["No-Such-Title"], "stages": ["cues"]})

    assert out["not_found"] == ["No-Such-Title"] and out["succeeded"] == [] and out["failed"] == []


FULL_JOBS = {"visual": {"stages": list(VISUAL), "requires": []},
             "embeddings": {"stages": ["embeddings"], "requires": ["visual"]},
             "audio": {"stages": ["audio"], "requires": []}}  # fmt: skip
FULL_GRAPH = {"shots": [], "keyframes": ["shots"], "cues": [], "embeddings": ["keyframes"], "audio": []}


def record_failure(d, monkeypatch, error: dict, stages=(), started="2000-01-01T00:00:00Z"):
    """``record_failure`` for the visual job in the production job layout (the test stack deploys only visual)."""
    import record_failure as handler_module

    from tests.lambdas.conftest import FakeContext

    monkeypatch.setenv("PRISM_JOBS", json.dumps(FULL_JOBS))
    monkeypatch.setenv("PRISM_STAGE_GRAPH", json.dumps(FULL_GRAPH))
    event = {"title_id": "Ep-1", "job": "visual", "stages": list(stages or FULL_GRAPH), "source_uri": "s3://b/Ep 1.mp4",
             "error": {"Error": "States.TaskFailed", "Cause": json.dumps(error)}, "execution_started_at": started}  # fmt: skip
    return handler_module.handler(event, FakeContext())


def test_a_job_that_died_marks_its_stages_failed_and_later_jobs_blocked(deployment, monkeypatch):
    d = deployment
    timeout = {"StatusReason": "Job attempt duration exceeded timeout", "Container": {"ExitCode": 137}}

    out = record_failure(d, monkeypatch, timeout)

    catalog = DynamoCatalog(d.table, client=d.ddb)
    for name in VISUAL:
        record = catalog.get_stage("Ep-1", name)
        assert record.status == "failed" and "exceeded timeout" in record.reason and "job visual" in record.reason
    embeddings = catalog.get_stage("Ep-1", "embeddings")
    assert embeddings.status == "blocked"
    assert embeddings.reason == "upstream stage(s) ['shots', 'keyframes'] did not succeed"
    assert catalog.get_stage("Ep-1", "audio") is None  # its own chain: not this job's business
    assert out["reason"] == catalog.get_stage("Ep-1", "shots").reason
    assert catalog.get_title("Ep-1").status == "failed"


def test_a_job_whose_worker_recorded_a_failure_keeps_its_records(deployment, monkeypatch):
    from prism.catalog import StageRecord

    d = deployment
    catalog = DynamoCatalog(d.table, client=d.ddb)
    old, new = "2000-01-01T00:00:00+00:00", "2030-01-01T00:00:00+00:00"

    def put(stage, status, reason, finished):
        catalog.put_stage(StageRecord("Ep-1", stage, status, reason, None, None, None, "fp" if status == "succeeded"
                                      else None, "sha", None, finished, 0.0, "test", []))  # fmt: skip

    put("shots", "succeeded", None, old)  # up to date: the worker left it alone
    put("keyframes", "succeeded", None, old)
    put("cues", "failed", "Ep 1.mp4: cues broke", new)  # the worker's own record, newer than the run

    out = record_failure(d, monkeypatch, {"StatusReason": "Essential container exited", "Container": {"ExitCode": 1}},
                         stages=["cues", "embeddings"], started="2020-01-01T00:00:00Z")  # fmt: skip

    assert out["reason"] == "Ep 1.mp4: cues broke"
    assert [catalog.get_stage("Ep-1", s).status for s in ("shots", "keyframes")] == ["succeeded", "succeeded"]
    assert catalog.get_stage("Ep-1", "cues").reason == "Ep 1.mp4: cues broke"
    blocked = catalog.get_stage("Ep-1", "embeddings")  # the job stopped its chain
    assert (blocked.status, blocked.reason) == ("blocked", "upstream stage(s) ['cues'] did not succeed")


def test_a_job_cancelled_for_want_of_spot_capacity_runs_again_on_demand(deployment, videos):
    """The scheduled queue cancels a job stuck RUNNABLE for Spot capacity; the run resubmits it on demand."""
    d = deployment
    deliver(d, videos, "Ep 1")
    d.spot_short = True

    out = d.start({"mode": "scheduled"})

    assert out["succeeded"] == ["Ep-1"] and out["failed"] == []
    assert [(t, j, q.split("Queue")[0]) for t, j, q in d.queues_used] == [
        ("Ep-1", "visual", "ComputeScheduled"), ("Ep-1", "visual", "ComputeOnDemand")]  # fmt: skip
    assert d.jobs_run == [("Ep-1", "visual", ",".join(VISUAL))]  # the worker ran once, on demand
    assert DynamoCatalog(d.table, client=d.ddb).get_title("Ep-1").status == "succeeded"
