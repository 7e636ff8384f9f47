"""``prism reprocess --env`` and ``prism status --env`` against moto (stack outputs, Step Functions, DynamoDB)."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from prism.catalog import TitleRecord
from prism.cli import app
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.ops import STACK_NAME

REGION = "us-east-1"


@pytest.fixture
def deployed(monkeypatch):
    """A stand-in for the deployed stack: its outputs, a state machine and the catalog table."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        role = boto3.client("iam").create_role(RoleName="sm", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        sfn = boto3.client("stepfunctions")
        machine = sfn.create_state_machine(
            name="prism", roleArn=role,
            definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        )["stateMachineArn"]  # fmt: skip
        ddb = boto3.client("dynamodb")
        ddb.create_table(
            TableName="prism-catalog", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("title_id", "record")],
            KeySchema=[{"AttributeName": "title_id", "KeyType": "HASH"}, {"AttributeName": "record", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{"IndexName": "record-index", "Projection": {"ProjectionType": "ALL"}, "KeySchema": [
                {"AttributeName": "record", "KeyType": "HASH"}, {"AttributeName": "title_id", "KeyType": "RANGE"}]}],
        )  # fmt: skip
        outputs = {"StateMachineArn": machine, "CatalogTableName": "prism-catalog"}
        # The stack's outputs (CloudFormation describe_stacks); moto's CloudFormation needs extras we do not install.
        monkeypatch.setattr("prism.cloud.ops.stack_outputs", lambda env, **_: outputs if env == "dev" else {})
        yield sfn, machine


def test_reprocess_starts_a_manual_execution(deployed):
    sfn, machine = deployed

    result = CliRunner().invoke(
        app, ["reprocess", "--env", "dev", "--titles", "Ep-1, Ep-2", "--stages", "cues", "--force"]
    )

    assert result.exit_code == 0, result.output
    (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    assert execution["name"].startswith("manual-") and execution["executionArn"] in result.output.replace("\n", "")
    started = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert started == {"mode": "manual", "titles": ["Ep-1", "Ep-2"], "stages": ["cues"], "force": True}


def test_status_with_env_reads_the_dynamodb_catalog(deployed):
    DynamoCatalog("prism-catalog").put_title(
        TitleRecord(
            "Ep-1", "s3://in/Ep 1.mp4", 10, None, "failed", "Ep 1.mp4: bad input", "0.1.0", "2026-01-01T00:00:00+00:00"
        )
    )

    result = CliRunner().invoke(app, ["status", "--env", "dev", "--json"])

    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["title_id"] == "Ep-1" and row["status"] == "failed" and row["reason"] == "Ep 1.mp4: bad input"


def test_stack_name_matches_the_cdk_config():
    from cdk.config import load

    assert STACK_NAME.format(env="dev") == load("dev").stack_name
