"""The store contract, run against both implementations: ``LocalStore`` (directory + SQLite) and
``S3Store`` (S3 + DynamoDB under moto); and the cloud worker invalidating dependents in other jobs."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from prism.artifacts import file_facts, new_manifest
from prism.catalog import SQLiteCatalog, StageRecord
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.store import S3Store
from prism.contract import Status
from prism.store import LocalStore
from prism.synth import Shot, Title, build_title
from tests.test_worker import ARTIFACTS, INPUT, REGION, TABLE, create_catalog_table, deployed_clients

TITLE = "Ep-1"
SOURCE = f"s3://{INPUT}/delivered/Ep-1.mp4"


class Local:
    def __init__(self, tmp_path: Path):
        self.catalog = SQLiteCatalog(tmp_path / "catalog.sqlite")
        self.out = tmp_path

    def store(self, root: Path | None = None) -> LocalStore:
        return LocalStore(self.out, TITLE, self.catalog)

    def delete(self, rel: str) -> None:
        (self.out / "titles" / TITLE / rel).unlink()

    def stored(self) -> set[str]:
        tdir = self.out / "titles" / TITLE
        return {p.relative_to(tdir).as_posix() for p in tdir.rglob("*") if p.is_file()} - {"manifest.json"}


class Cloud:
    def __init__(self, tmp_path: Path):
        self.s3 = boto3.client("s3", region_name=REGION)
        ddb = boto3.client("dynamodb", region_name=REGION)
        self.s3.create_bucket(Bucket=ARTIFACTS)
        create_catalog_table(ddb)
        self.catalog = DynamoCatalog(TABLE, client=ddb)
        self.tmp = tmp_path

    def store(self, root: Path | None = None) -> S3Store:  # each job has its own scratch directory
        return S3Store(s3=self.s3, bucket=ARTIFACTS, catalog=self.catalog, title_id=TITLE,
                       local_root=root or self.tmp / "job", source_uri=SOURCE, source_etag="e1",
                       pipeline_version="t")  # fmt: skip

    def delete(self, rel: str) -> None:
        self.s3.delete_object(Bucket=ARTIFACTS, Key=f"titles/{TITLE}/{rel}")

    def stored(self) -> set[str]:
        objs = self.s3.list_objects_v2(Bucket=ARTIFACTS, Prefix=f"titles/{TITLE}/").get("Contents", [])
        return {o["Key"].removeprefix(f"titles/{TITLE}/") for o in objs}


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path, monkeypatch):
    if request.param == "local":
        yield Local(tmp_path)
        return
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield Cloud(tmp_path)


def _commit(store, manifest, name: str, files: dict[str, bytes], fp: str = "fp-1") -> dict:
    """What the Runner does for a succeeded stage: stage files, publish, record."""
    staging = store.title_dir / ".staging" / name
    for rel, data in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    facts = {rel: file_facts(staging / rel) for rel in files}
    outputs = sorted(files)
    with store.publishing(name, set(outputs)):
        store.publish(staging, outputs)
        manifest["stages"][name] = {
            "status": "succeeded", "reason": None, "model": {"name": name, "version": "1"}, "params": {},
            "params_hash": "p", "fingerprint": fp, "outputs": outputs, "files": facts, "started_at": None,
            "finished_at": "2026-01-01T00:00:00+00:00", "duration_s": 0.1, "metrics": {},
        }  # fmt: skip
        store.record(manifest, name, _record(name, "succeeded", fp, outputs))
    return manifest["stages"][name]


def _record(name: str, status: str, fp: str, outputs: list[str]) -> StageRecord:
    return StageRecord(TITLE, name, status, None if status == "succeeded" else "why", name, "1", "p", fp, "s" * 64,
                       None, "2026-01-01T00:00:00+00:00", 0.1, "0.1.0", outputs)  # fmt: skip


def _manifest():
    return new_manifest(TITLE, {"uri": SOURCE, "bytes": 1, "sha256": "s" * 64, "etag": "e1", "probe": None}, "0.1.0")


def test_a_new_title_has_nothing_recorded(backend):
    assert backend.store().load() is None


def test_published_and_recorded_stage_loads_back_intact(backend):
    store = backend.store()
    store.load()
    entry = _commit(store, _manifest(), "parts", {"parts/a-0.txt": b"zero", "parts.parquet": b"index"})

    loaded = backend.store().load()
    assert loaded["stages"]["parts"]["outputs"] == ["parts.parquet", "parts/a-0.txt"]
    assert loaded["stages"]["parts"]["fingerprint"] == "fp-1" and loaded["source"]["uri"] == SOURCE
    assert backend.stored() == {"parts.parquet", "parts/a-0.txt"}
    assert backend.catalog.get_stage(TITLE, "parts").outputs == entry["outputs"]
    assert backend.store().outputs_intact(loaded["stages"]["parts"])


def test_a_missing_output_is_not_intact(backend):
    store = backend.store()
    store.load()
    entry = _commit(store, _manifest(), "parts", {"parts/a-0.txt": b"zero", "parts.parquet": b"index"})
    backend.delete("parts/a-0.txt")
    assert not backend.store().outputs_intact(entry)


def test_remove_deletes_what_no_entry_lists(backend):
    store = backend.store()
    store.load()
    manifest = _manifest()
    _commit(store, manifest, "parts", {"parts/a-0.txt": b"zero", "parts/a-1.txt": b"one", "parts.parquet": b"i"})
    _commit(store, manifest, "parts", {"parts/a-0.txt": b"zero", "parts.parquet": b"i2"}, fp="fp-2")
    store.remove({"parts/a-1.txt"}, replaced=True)
    assert backend.stored() == {"parts.parquet", "parts/a-0.txt"}


def test_fetch_makes_recorded_outputs_readable_in_the_title_dir(backend, tmp_path):
    writer = backend.store(tmp_path / "job-a")
    writer.load()
    entry = _commit(writer, _manifest(), "parts", {"parts/a-0.txt": b"zero", "parts.parquet": b"index"})
    reader = backend.store(tmp_path / "job-b")  # another Batch job: a fresh scratch directory
    reader.load()
    reader.fetch(entry)
    assert (reader.title_dir / "parts/a-0.txt").read_bytes() == b"zero"
    assert (reader.title_dir / "parts.parquet").read_bytes() == b"index"


def test_mark_stale_loses_to_a_record_written_since_it_was_loaded(backend):
    store = backend.store()
    store.load()
    manifest = _commit(store, _manifest(), "tally", {"tally.parquet": b"t"}) and store.load()
    stale = {**manifest["stages"]["tally"], "status": Status.STALE.value, "reason": "parts changed"}
    manifest["stages"]["tally"] = stale

    assert not store.mark_stale(manifest, "tally", _record("tally", "stale", "fp-1", ["tally.parquet"]), "fp-0")
    assert backend.catalog.get_stage(TITLE, "tally").status == "succeeded"
    assert store.mark_stale(manifest, "tally", _record("tally", "stale", "fp-1", ["tally.parquet"]), "fp-1")
    assert backend.catalog.get_stage(TITLE, "tally").status == "stale"
    assert backend.store().load()["stages"]["tally"]["status"] == "stale"


# ------------------------------------------------------------------ the worker, on the same stores


@pytest.fixture
def cloud(monkeypatch, tmp_path, cheap_stages):
    """moto S3 + DynamoDB, a tiny video delivered, and ``parts`` -> ``tally`` registered (two "jobs")."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    video = tmp_path / "Ep-1.mp4"
    build_title(Title(shots=[Shot("orange", 0.5)], width=64, height=36), video)
    with mock_aws():
        s3, ddb = deployed_clients()
        s3.upload_file(str(video), INPUT, "delivered/Ep-1.mp4")
        yield s3, ddb


def _run(cloud, tmp_path, stages, **job):
    from prism.cloud.worker import Job, run_job

    s3, ddb = cloud
    spec = Job(stages=stages, title_id=TITLE, source_uri=SOURCE, artifacts_bucket=ARTIFACTS, catalog_table=TABLE,
               pipeline_version="t", **job)  # fmt: skip
    return run_job(spec, s3=s3, dynamodb=ddb, work_dir=tmp_path)


def test_worker_records_a_dependent_in_another_job_stale_when_its_upstream_changes(cloud, tmp_path):
    catalog = DynamoCatalog(TABLE, client=cloud[1])
    assert _run(cloud, tmp_path, ("parts",)).status == "succeeded"
    tally = _run(cloud, tmp_path, ("tally",))  # its own job: parts' outputs come from S3
    assert [(o.stage, o.status) for o in tally.stages] == [("tally", "succeeded")]
    made = catalog.get_stage(TITLE, "tally")

    same = _run(cloud, tmp_path, ("parts",), force=True)  # rerun, same inputs: tally still follows from them
    assert same.status == "succeeded" and catalog.get_stage(TITLE, "tally") == made

    _run(cloud, tmp_path, ("parts",), params={"parts": {"count": 3}})  # parts changed: tally no longer follows

    stale = catalog.get_stage(TITLE, "tally")
    assert stale.status == "stale" and "parts" in stale.reason and stale.fingerprint == made.fingerprint
    item = next(i for i in catalog.stage_items(TITLE) if i["stage"] == "tally")
    assert item["manifest_entry"]["status"] == "stale" and item["manifest_entry"]["outputs"] == ["tally.parquet"]
    again = _run(cloud, tmp_path, ("tally",))
    assert [(o.stage, o.status, o.reused) for o in again.stages] == [("tally", "succeeded", False)]
    assert catalog.get_stage(TITLE, "tally").status == "succeeded"


def test_worker_records_a_broken_redelivery_failed_with_its_reason_and_keeps_the_old_objects(cloud, tmp_path):
    """The local rule (keep the manifest of a title whose new source cannot be read) must not silence the
    cloud: there each stage record stands alone, and record_failure would only know 'exit code 1'."""
    s3, ddb = cloud
    catalog = DynamoCatalog(TABLE, client=ddb)
    assert _run(cloud, tmp_path, ("parts",)).status == "succeeded"
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACTS)["Contents"]}
    s3.put_object(Bucket=INPUT, Key="delivered/Ep-1.mp4", Body=b"this is not a video")

    result = _run(cloud, tmp_path, ("parts",))

    assert result.status == "failed" and "Ep-1.mp4" in result.reason
    record = catalog.get_stage(TITLE, "parts")
    assert (record.status, record.reason) == ("failed", result.reason)
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACTS)["Contents"]} == before  # nothing deleted
