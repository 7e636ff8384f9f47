"""The names every side of a boundary shares come from ``prism.contract``, and the sides agree on them."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prism import contract
from prism.contract import Status

ROOT = Path(__file__).resolve().parents[1]


def test_the_container_runs_the_worker_module_the_cdk_names():
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "containers" / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd and tuple(json.loads(cmd.group(1))) == contract.WORKER_COMMAND
    worker = importlib.import_module(contract.WORKER_MODULE)
    assert callable(worker.main) and worker.EXIT_TRANSIENT == contract.EXIT_TRANSIENT == 75
    from prism import worker as shim  # what runbooks and older images call: python -m prism.worker

    assert shim.main is worker.main


def test_status_is_its_value_in_json_and_comparisons():
    assert json.dumps({"status": Status.BLOCKED}) == '{"status": "blocked"}'
    assert Status("stale") is Status.STALE and Status.SUCCEEDED == "succeeded"
    assert f"{Status.FAILED}" == "failed" and str(Status.SKIPPED) == "skipped"
    assert [s.value for s in Status] == ["succeeded", "failed", "skipped", "blocked", "stale"]


def test_the_cdk_names_its_stack_bus_and_prefixes_from_the_contract():
    from cdk.config import ENVIRONMENTS
    from cdk.storage import RUNS_PREFIX, TITLES_PREFIX
    from prism.artifacts import TITLES_DIR
    from prism.cloud.s3 import title_prefix

    config = next(iter(ENVIRONMENTS.values()))
    assert config.stack_name == contract.STACK_NAME.format(env=config.name) == f"Prism-{config.name}"
    assert (TITLES_PREFIX, RUNS_PREFIX) == (contract.TITLES_PREFIX, contract.RUNS_PREFIX)
    assert title_prefix("T") == f"{contract.TITLES_PREFIX}T/" and TITLES_DIR == "titles"


def test_blocked_is_a_status_and_older_records_still_count_as_blocked():
    from prism.artifacts import STATUSES, blocked_reason, is_blocked, manifest_schema

    assert STATUSES == tuple(s.value for s in Status)
    assert manifest_schema()["$defs"]["stage"]["properties"]["status"]["enum"] == list(STATUSES)
    assert is_blocked({"status": "blocked", "reason": blocked_reason(["shots"])})
    assert is_blocked({"status": "skipped", "reason": blocked_reason(["shots"])})  # written by 0.1.0 workers
    assert not is_blocked({"status": "skipped", "reason": "Ep 1.mp4: no audio track"})
    assert not is_blocked({"status": "stale", "reason": blocked_reason(["shots"])})


def test_a_stage_entry_round_trips_through_manifest_and_catalog_for_every_status():
    import pytest

    from prism.artifacts import StageEntry, validate_manifest
    from prism.catalog import SQLiteCatalog

    for status in Status:
        entry = StageEntry(
            status, None if status is Status.SUCCEEDED else f"why {status}", model={"name": "m", "version": "1"},
            params={"k": 1}, params_hash="h", fingerprint="f" * 32,
            outputs=[] if status in (Status.FAILED, Status.BLOCKED) else ["a.parquet"],
            files={} if status in (Status.FAILED, Status.BLOCKED) else {"a.parquet": {"bytes": 3, "sha256": "0" * 64}},
            started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:01+00:00", duration_s=1.5,
            metrics={"n": 2},
        )  # fmt: skip
        as_json = json.loads(json.dumps(entry.to_manifest()))
        assert as_json["status"] == status.value and StageEntry.from_manifest(as_json) == entry
        manifest = {"schema_version": "1.0", "title_id": "T", "prism_version": "0.1.0", "created_at": "x",
                    "updated_at": "x", "source": {"uri": "file:///T.mp4", "bytes": 1, "sha256": "a" * 64,
                                                  "etag": None, "probe": None}, "stages": {"shots": as_json}}  # fmt: skip
        validate_manifest(manifest)
        record = entry.to_record("T", "shots", "s" * 64, "0.1.0")
        assert (record.status, record.model_name, record.outputs, record.duration_s) == (
            status.value, "m", entry.outputs, 1.5)  # fmt: skip
        back = StageEntry.from_record(record)
        assert (back.status, back.fingerprint, back.model, back.reason) == (
            entry.status, entry.fingerprint, entry.model, entry.reason or None)  # fmt: skip
    catalog = SQLiteCatalog(":memory:")
    catalog.put_stage(StageEntry(Status.STALE, "parts changed", outputs=["a"]).to_record("T", "tally", None, "0"))
    assert StageEntry.from_record(catalog.get_stage("T", "tally")).status == "stale"
    with pytest.raises(ValueError, match="'done' is not a valid Status"):
        StageEntry("done")


def test_every_prism_variable_the_cdk_and_the_lambdas_spell_is_in_the_contract():
    """The CDK still spells some names itself; each must be one the contract defines (a typo fails here)."""
    defined = {value for name, value in vars(contract).items() if name.startswith("ENV_")}
    spelled = set()
    for folder in ("cdk", "lambdas", "prism/cloud"):
        for path in (ROOT / folder).glob("*.py"):
            spelled |= set(re.findall(r"[\"'](PRISM_[A-Z_]+)[\"']", path.read_text()))
    assert spelled and spelled <= defined, sorted(spelled - defined)
