"""The post-deploy smoke test (``python -m prism.cloud.smoke``) against moto's Step Functions interpreter."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from prism.cloud.smoke import SmokeTestFailed, main, run_smoke_test

REGION = "us-east-1"
TITLE = "prism-smoke-sample"


def summary(**lists) -> dict:
    out = {"mode": "manual", "succeeded": [], "failed": [], "skipped": [], "not_found": [], **lists}
    out["counts"] = {k: len(out[k]) for k in ("succeeded", "failed", "skipped", "not_found")}
    return out


@pytest.fixture
def sfn(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield boto3.client("stepfunctions", region_name=REGION)


def machine(sfn, states: dict, name: str = "prism") -> str:
    """A state machine standing in for Prism's: the smoke test only sees its status and output."""
    role = boto3.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    definition = {"StartAt": "Run", "States": states}
    return sfn.create_state_machine(name=name, roleArn=role, definition=json.dumps(definition))["stateMachineArn"]


def returning(output: dict) -> dict:
    return {"Run": {"Type": "Pass", "Result": output, "End": True}}


def test_passes_when_the_title_succeeds_and_starts_a_forced_manual_run(sfn):
    arn = machine(sfn, returning(summary(succeeded=[TITLE])))

    result = run_smoke_test(sfn, arn, TITLE, ["cues"], timeout_s=30, poll_s=0.05)

    assert result.summary["succeeded"] == [TITLE]
    started = json.loads(sfn.describe_execution(executionArn=result.execution_arn)["input"])
    assert started == {"mode": "manual", "titles": [TITLE], "stages": ["cues"], "force": True}


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (summary(failed=[{"title_id": TITLE, "reason": "shots: CUDA unavailable"}]), "CUDA unavailable"),
        (summary(not_found=[TITLE]), "not in the input bucket"),
        (summary(succeeded=["another-title"]), "not among the succeeded"),
    ],
)
def test_fails_unless_the_title_succeeded(sfn, output, message):
    arn = machine(sfn, returning(output))

    with pytest.raises(SmokeTestFailed, match=message):
        run_smoke_test(sfn, arn, TITLE, [], timeout_s=30, poll_s=0.05)


def test_fails_when_the_execution_fails(sfn, caplog):
    arn = machine(sfn, {"Run": {"Type": "Fail", "Error": "DiscoverFailed", "Cause": "discover crashed"}})

    with pytest.raises(SmokeTestFailed, match="FAILED.*DiscoverFailed: discover crashed"):
        run_smoke_test(sfn, arn, TITLE, [], timeout_s=30, poll_s=0.05)
    caplog.clear()  # moto's interpreter logs the Fail state as an ERROR


def test_stops_the_execution_and_fails_after_the_timeout(sfn, monkeypatch):
    arn = machine(sfn, {"Run": {"Type": "Wait", "Seconds": 600, "End": True}})
    ticks, polls, stopped = iter(range(0, 10_000, 100)), [], []
    monkeypatch.setattr(sfn, "stop_execution", lambda **kwargs: stopped.append(kwargs))

    with pytest.raises(SmokeTestFailed, match="still running after 250s"):
        run_smoke_test(sfn, arn, TITLE, [], timeout_s=250, clock=lambda: next(ticks), sleep=polls.append)

    (execution,) = sfn.list_executions(stateMachineArn=arn)["executions"]
    assert [s["executionArn"] for s in stopped] == [execution["executionArn"]]
    assert polls == [20, 20]  # checked at t=100 and t=200; t=300 is past the 250 s deadline


def test_main_exits_non_zero_on_failure_and_zero_on_success(sfn, caplog):
    ok = machine(sfn, returning(summary(succeeded=[TITLE])))
    argv = ["--state-machine-arn", ok, "--title", TITLE, "--stages", "cues, audio", "--poll-seconds", "0.05"]
    assert main(argv, sfn=sfn) == 0
    bad = machine(sfn, returning(summary(not_found=[TITLE])), name="prism-broken")
    assert main(["--state-machine-arn", bad, "--title", TITLE, "--poll-seconds", "0.05"], sfn=sfn) == 1
    assert "smoke test failed" in caplog.text
    caplog.clear()
