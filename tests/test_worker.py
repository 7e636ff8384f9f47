"""The Batch worker against moto S3 + DynamoDB on a small real video: the ``cues`` stage alone, and the
``visual`` group (shots, keyframes, cues) sharing one download and one decode."""

from __future__ import annotations

import boto3
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from prism.cloud.catalog import DynamoCatalog
from prism.cloud.worker import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_TRANSIENT, Job, main, run_job
from prism.errors import ConfigError
from prism.synth import Shot, Title, build_title

REGION = "us-east-1"
INPUT, ARTIFACTS, TABLE = "media-input", "prism-artifacts", "prism-catalog"


def create_catalog_table(client, name: str = TABLE) -> None:
    """The table layout the CDK storage construct deploys (tests/cdk asserts the same keys)."""
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("title_id", "record")],
        KeySchema=[{"AttributeName": "title_id", "KeyType": "HASH"}, {"AttributeName": "record", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "record-index",
                "KeySchema": [
                    {"AttributeName": "record", "KeyType": "HASH"},
                    {"AttributeName": "title_id", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    """3 s, 160x90: a black span and a silent span the cues stage must find."""
    path = tmp_path_factory.mktemp("worker") / "Episode 1.mp4"
    title = Title(
        shots=[Shot("orange", 1.0), Shot("blue", 1.0)],
        width=160, height=90, black_after={0: 1.0}, silences=[(0.0, 1.5)],
    )  # fmt: skip
    build_title(title, path)
    return path


def deployed_clients():
    """Inside ``mock_aws``: S3 with the input and artifacts buckets and the catalog table, as deployed."""
    s3 = boto3.client("s3", region_name=REGION)
    ddb = boto3.client("dynamodb", region_name=REGION)
    for bucket in (INPUT, ARTIFACTS):
        s3.create_bucket(Bucket=bucket)
    create_catalog_table(ddb)
    return s3, ddb


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield deployed_clients()


def _job(**overrides) -> Job:
    base = dict(
        stages=("cues",), title_id="Episode-1", source_uri=f"s3://{INPUT}/delivered/Episode 1.mp4",
        artifacts_bucket=ARTIFACTS, catalog_table=TABLE, pipeline_version="test-1",
    )  # fmt: skip
    return Job(**{**base, **overrides})


def _keys(s3, prefix: str = "") -> dict[str, str]:
    objs = s3.list_objects_v2(Bucket=ARTIFACTS, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in objs}


def test_worker_runs_cues_uploads_artifacts_and_records_the_stage(aws, tiny_video, tmp_path):
    s3, ddb = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")

    result = run_job(_job(), s3=s3, dynamodb=ddb, work_dir=tmp_path)

    assert (result.status, result.exit_code) == ("succeeded", EXIT_OK)
    assert set(_keys(s3)) == {  # no manifest: finalize owns it
        "titles/Episode-1/cues.parquet",
        "tables/cues/Episode-1.parquet",  # the catalogue-wide tables (prism.tables)
        "tables/titles/Episode-1.parquet",
    }
    body = s3.get_object(Bucket=ARTIFACTS, Key="titles/Episode-1/cues.parquet")["Body"].read()
    (tmp_path / "cues.parquet").write_bytes(body)
    cues = pq.read_table(tmp_path / "cues.parquet").to_pylist()
    kinds = {c["cue_type"] for c in cues}
    assert {"black", "silence"} <= kinds
    black = next(c for c in cues if c["cue_type"] == "black")
    assert black["start_s"] == pytest.approx(1.0, abs=0.1)

    catalog = DynamoCatalog(TABLE, client=ddb)
    record = catalog.get_stage("Episode-1", "cues")
    assert record.status == "succeeded" and record.outputs == ["cues.parquet"]
    assert record.fingerprint and len(record.source_sha256) == 64
    item = catalog.stage_items("Episode-1")[0]
    assert item["manifest_entry"]["outputs"] == ["cues.parquet"]
    assert item["source"]["uri"] == f"s3://{INPUT}/delivered/Episode 1.mp4"
    assert item["source"]["etag"] and item["source"]["probe"]["video"]["width"] == 160
    assert item["pipeline_version"] == "test-1"
    assert catalog.get_title("Episode-1") is None  # the title's status belongs to finalize


def test_rerun_is_a_no_op_and_force_redoes_the_stage(aws, tiny_video, tmp_path):
    s3, ddb = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")
    run_job(_job(), s3=s3, dynamodb=ddb, work_dir=tmp_path)
    catalog = DynamoCatalog(TABLE, client=ddb)
    first = catalog.get_stage("Episode-1", "cues")
    before = _keys(s3)
    downloads = []
    real_download = s3.download_file
    s3.download_file = lambda *a, **k: downloads.append(a) or real_download(*a, **k)

    again = run_job(_job(), s3=s3, dynamodb=ddb, work_dir=tmp_path)

    assert (again.status, again.exit_code) == ("skipped", EXIT_OK)
    assert [(o.stage, o.reused) for o in again.stages] == [("cues", True)]
    assert downloads == []  # decided from the catalog and S3 heads alone
    assert _keys(s3) == before
    assert catalog.get_stage("Episode-1", "cues") == first

    forced = run_job(_job(force=True), s3=s3, dynamodb=ddb, work_dir=tmp_path)
    assert forced.status == "succeeded" and not forced.stages[0].reused
    redone = catalog.get_stage("Episode-1", "cues")
    assert redone.fingerprint == first.fingerprint and redone.finished_at > first.finished_at
    assert set(_keys(s3)) == set(before)


def test_changed_source_reruns_the_stage(aws, tiny_video, tmp_path):
    s3, ddb = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")
    run_job(_job(), s3=s3, dynamodb=ddb, work_dir=tmp_path)
    first = DynamoCatalog(TABLE, client=ddb).get_stage("Episode-1", "cues")
    s3.put_object(Bucket=INPUT, Key="delivered/Episode 1.mp4", Body=tiny_video.read_bytes() + b"\0" * 16)

    result = run_job(_job(), s3=s3, dynamodb=ddb, work_dir=tmp_path)

    assert result.status == "succeeded" and not result.stages[0].reused
    assert DynamoCatalog(TABLE, client=ddb).get_stage("Episode-1", "cues").source_sha256 != first.source_sha256


def test_undecodable_source_fails_with_a_reason_and_uploads_nothing(aws, tmp_path):
    s3, ddb = aws
    s3.put_object(Bucket=INPUT, Key="delivered/broken.mp4", Body=b"this is not a video")

    result = run_job(_job(title_id="broken", source_uri=f"s3://{INPUT}/delivered/broken.mp4"), s3=s3, dynamodb=ddb)

    assert (result.status, result.exit_code) == ("failed", EXIT_FAILED)
    assert "broken.mp4" in result.reason
    assert _keys(s3) == {}
    record = DynamoCatalog(TABLE, client=ddb).get_stage("broken", "cues")
    assert record.status == "failed" and record.reason == result.reason


def test_blocked_stage_fails_when_its_upstream_never_succeeded(aws, tiny_video):
    s3, ddb = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")

    result = run_job(_job(stages=("keyframes",)), s3=s3, dynamodb=ddb)

    assert result.status == "failed" and "shots" in result.reason
    assert _keys(s3) == {}
    record = DynamoCatalog(TABLE, client=ddb).get_stage("Episode-1", "keyframes")
    assert (record.status, record.reason) == ("blocked", result.reason)  # a status of its own, not a reason prefix


def test_main_reads_the_batch_environment(aws, tiny_video, monkeypatch, capsys):
    s3, _ = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")
    for name, value in {
        "PRISM_STAGES": "cues", "PRISM_JOB": "visual", "PRISM_TITLE_ID": "Episode-1", "PRISM_SOURCE_URI": f"s3://{INPUT}/delivered/Episode 1.mp4",
        "PRISM_ARTIFACTS_BUCKET": ARTIFACTS, "PRISM_CATALOG_TABLE": TABLE, "PRISM_FORCE": "false",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)

    assert main([]) == EXIT_OK
    assert main([]) == EXIT_OK  # second time: up to date
    assert main(["--stages", "no-such-stage"]) == EXIT_CONFIG
    assert main(["--params", '{"shots": {}}']) == EXIT_CONFIG  # parameters for a stage the job does not run
    monkeypatch.delenv("PRISM_TITLE_ID")
    assert main([]) == EXIT_CONFIG


VISUAL = ("shots", "keyframes", "cues")


@pytest.fixture
def counted(monkeypatch, aws):
    """Counts source downloads and full visual decodes (SharedMedia calls ``prism.media.decode_visual``)."""
    import prism.media

    s3, _ = aws
    calls = {"downloads": 0, "decodes": 0}
    real_decode, real_download = prism.media.decode_visual, s3.download_file

    def decode(*a, **k):
        calls["decodes"] += 1
        return real_decode(*a, **k)

    def download(bucket, key, *a, **k):
        calls["downloads"] += bucket == INPUT
        return real_download(bucket, key, *a, **k)

    monkeypatch.setattr(prism.media, "decode_visual", decode)
    monkeypatch.setattr(s3, "download_file", download)
    return calls


@pytest.mark.slow
def test_visual_group_downloads_and_decodes_the_source_once(aws, tiny_video, tmp_path, counted):
    s3, ddb = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")

    result = run_job(_job(stages=("cues", "keyframes", "shots"), name="visual"), s3=s3, dynamodb=ddb, work_dir=tmp_path)

    order = [o.stage for o in result.stages]
    assert {o.stage: o.status for o in result.stages} == dict.fromkeys(VISUAL, "succeeded")
    assert order.index("shots") < order.index("keyframes")  # dependency order, whatever order they were listed in
    assert counted == {"downloads": 1, "decodes": 1}
    catalog = DynamoCatalog(TABLE, client=ddb)
    items = {i["stage"]: i for i in catalog.stage_items("Episode-1")}
    assert set(items) == set(VISUAL)
    for stage in VISUAL:  # one record and one manifest entry per stage, as a local run writes
        assert (
            items[stage]["status"] == "succeeded"
            and items[stage]["manifest_entry"]["outputs"] == items[stage]["outputs"]
        )
    keys = set(_keys(s3))
    assert {
        "titles/Episode-1/shots.parquet",
        "titles/Episode-1/keyframes.parquet",
        "titles/Episode-1/cues.parquet",
    } <= keys
    decode_reports = [s for s in VISUAL if "shared_decode_s" in items[s]["manifest_entry"]["metrics"]]
    assert len(decode_reports) == 1  # the one decode is reported on the stage that triggered it


@pytest.mark.slow
def test_a_group_runs_only_the_listed_stages_and_those_not_up_to_date(aws, tiny_video, tmp_path, counted):
    s3, ddb = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")
    run_job(_job(stages=VISUAL), s3=s3, dynamodb=ddb, work_dir=tmp_path)
    catalog = DynamoCatalog(TABLE, client=ddb)
    first = {s: catalog.get_stage("Episode-1", s) for s in VISUAL}

    forced = run_job(_job(stages=("cues",), force=True), s3=s3, dynamodb=ddb, work_dir=tmp_path)

    assert [(o.stage, o.status) for o in forced.stages] == [("cues", "succeeded")]
    assert catalog.get_stage("Episode-1", "cues").finished_at > first["cues"].finished_at
    assert {s: catalog.get_stage("Episode-1", s) for s in ("shots", "keyframes")} == {
        s: first[s] for s in ("shots", "keyframes")}  # fmt: skip

    s3.delete_object(Bucket=ARTIFACTS, Key="titles/Episode-1/keyframes.parquet")
    counted.update(downloads=0, decodes=0)
    again = run_job(_job(stages=VISUAL), s3=s3, dynamodb=ddb, work_dir=tmp_path)

    assert {o.stage: (o.status, o.reused) for o in again.stages} == {
        "shots": ("skipped", True), "keyframes": ("succeeded", False), "cues": ("skipped", True)}  # fmt: skip
    assert again.status == "succeeded" and counted["downloads"] == 1
    assert catalog.get_stage("Episode-1", "shots") == first["shots"]
    assert "titles/Episode-1/keyframes.parquet" in _keys(s3)

    counted.update(downloads=0, decodes=0)
    assert run_job(_job(stages=VISUAL), s3=s3, dynamodb=ddb, work_dir=tmp_path).status == "skipped"
    assert counted == {"downloads": 0, "decodes": 0}


def test_a_stage_without_its_model_fails_the_cloud_job_instead_of_skipping(aws, tiny_video, monkeypatch):
    """In the cloud (PRISM_REQUIRE_MODELS) embeddings without a model must not end 'skipped' and count as done."""
    s3, _ = aws
    s3.upload_file(str(tiny_video), INPUT, "delivered/Episode 1.mp4")
    monkeypatch.delenv("PRISM_EMBEDDINGS_MODEL", raising=False)
    with pytest.raises(ConfigError, match="stage embeddings has no model in this worker: no image-text model"):
        run_job(_job(stages=("embeddings",), require_models=True))
    monkeypatch.setenv("PRISM_EMBEDDINGS_MODEL", "/opt/prism/models/not-there")
    for name, value in {
        "PRISM_STAGES": "embeddings", "PRISM_JOB": "embeddings", "PRISM_TITLE_ID": "Episode-1",
        "PRISM_SOURCE_URI": f"s3://{INPUT}/delivered/Episode 1.mp4", "PRISM_ARTIFACTS_BUCKET": ARTIFACTS,
        "PRISM_CATALOG_TABLE": TABLE, "PRISM_REQUIRE_MODELS": "true",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert main([]) == EXIT_CONFIG  # not retried, and record_failure marks the stage failed
    assert _keys(s3) == {}  # nothing ran, nothing was downloaded or written


def test_a_configured_asr_model_missing_from_the_worker_fails_the_cloud_job(aws, monkeypatch, tmp_path):
    """Production names large-v3-turbo from the model location; a worker without it must not fall back silently."""
    monkeypatch.setenv("PRISM_ASR_MODEL", str(tmp_path / "faster-whisper-large-v3-turbo"))
    with pytest.raises(ConfigError, match="stage audio has no model in this worker: ASR model directory"):
        run_job(_job(stages=("audio",), require_models=True))


@pytest.mark.parametrize(("code", "status", "exit_code"), [
    ("AccessDenied", 403, EXIT_CONFIG), ("NoSuchKey", 404, EXIT_CONFIG),
    ("SlowDown", 503, EXIT_TRANSIENT), ("ThrottlingException", 400, EXIT_TRANSIENT), ("InternalError", 500, EXIT_TRANSIENT),
])  # fmt: skip
def test_only_transient_aws_errors_are_retried(monkeypatch, code, status, exit_code):
    """Batch retries exit 75; an AccessDenied retried three times only delays the failure."""
    from botocore.exceptions import ClientError

    import prism.cloud.worker

    def refuse(job):
        raise ClientError({"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                          "GetObject")  # fmt: skip

    monkeypatch.setattr(prism.cloud.worker, "run_job", refuse)
    argv = ["--stages", "cues", "--title-id", "T", "--source", "s3://b/T.mp4", "--artifacts-bucket", "a",
            "--catalog-table", "t"]  # fmt: skip
    assert main(argv) == exit_code


# -- failure classes (issue 21 item 8) and the worker's own reason (item 7) -----------------------------------


def _outcome(stage: str, reason: str):
    from prism.runner import StageOutcome

    return StageOutcome(stage, "failed", reason)


@pytest.mark.parametrize(("reason", "exit_code"), [
    ("t.mp4: internal error in stage shots: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 76),
    ("t.mp4: stage shots: ffmpeg: [h264_cuvid] cuvidCreateDecoder failed: CUDA_ERROR_NO_DEVICE", 76),
    ("t.mp4: internal error in stage audio: RuntimeError: NVRM: Xid (PCI:0000:00:1e): 79, GPU has fallen off the bus", 76),
    ("host error: stage audio: cuda unusable on a GPU job, not falling back to the CPU", 76),
    ("t.mp4: internal error in stage keyframes: S3UploadFailedError: Failed to upload ... SlowDown", 76),
    ("t.mp4: moov atom not found", EXIT_FAILED),
    ("t.mp4: no video stream", EXIT_FAILED),
])  # fmt: skip
def test_a_stage_that_failed_on_its_host_is_retried_and_bad_media_is_not(reason, exit_code):
    from prism.cloud.worker import JobResult

    assert JobResult([_outcome("shots", reason)]).exit_code == exit_code


@pytest.mark.parametrize(("error", "exit_code", "said"), [
    ("config", EXIT_CONFIG, "configuration error (not retried): stage embeddings has no model"),
    ("host", 76, "host failure, the job will be retried: host error: no GPU"),
    ("upload", EXIT_TRANSIENT, "transient AWS error, the job will be retried: Failed to upload"),
])  # fmt: skip
def test_the_workers_own_reason_for_a_failed_job_is_stored_for_record_failure(aws, monkeypatch, error, exit_code,
                                                                                said):  # fmt: skip
    """Batch reports only "Essential container in task exited"; the worker stores why it exited."""
    from boto3.exceptions import S3UploadFailedError

    import prism.cloud.worker
    from prism.errors import HostError

    errors = {"config": ConfigError("stage embeddings has no model in this worker"), "host": HostError("no GPU"),
              "upload": S3UploadFailedError("Failed to upload /tmp/x to b/k: SlowDown")}  # fmt: skip

    def fail(job):
        raise errors[error]

    monkeypatch.setattr(prism.cloud.worker, "run_job", fail)
    monkeypatch.setenv("PRISM_EXECUTION", "run-7")
    argv = ["--stages", "cues", "--title-id", "Episode-1", "--source", f"s3://{INPUT}/Episode 1.mp4",
            "--artifacts-bucket", ARTIFACTS, "--catalog-table", TABLE, "--job", "title"]  # fmt: skip

    assert main(argv) == exit_code
    item = DynamoCatalog(TABLE).job_failure("Episode-1", "title")
    assert item["reason"].startswith(said) and item["exit_code"] == exit_code and item["execution"] == "run-7"
