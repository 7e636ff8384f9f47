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
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "containers" / "Dockerfile").read_text(), re.M)
    assert cmd and tuple(json.loads(cmd.group(1))) == contract.WORKER_COMMAND
    worker = importlib.import_module(contract.WORKER_MODULE)
    assert callable(worker.main) and worker.EXIT_TRANSIENT == contract.EXIT_TRANSIENT == 75


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
