"""Operator actions against a deployed environment: what ``prism reprocess|status --env`` call.

The deployed stack's outputs say where things are (state machine, catalog table), so nothing
here needs account ids or resource names.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from prism.cloud.catalog import DynamoCatalog
from prism.contract import STACK_NAME

__all__ = ["STACK_NAME", "cloud_catalog", "stack_outputs", "start_manual_run"]


def stack_outputs(env: str, *, cloudformation=None) -> dict[str, str]:
    import boto3

    cfn = cloudformation or boto3.client("cloudformation")
    (stack,) = cfn.describe_stacks(StackName=STACK_NAME.format(env=env))["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def start_manual_run(
    env: str, titles: list[str], stages: list[str], force: bool, *, language: str = "", sfn=None, outputs=None
) -> str:
    """Start ``{"mode": "manual", ...}`` on the environment's state machine; returns the execution ARN.

    ``language`` is the audio stage's language hint for these titles (e.g. ``ko``); "" = the environment's.
    """
    import boto3

    if not titles:
        raise ValueError("give at least one title id")
    outputs = outputs or stack_outputs(env)
    client = sfn or boto3.client("stepfunctions")
    name = f"manual-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    payload = {"mode": "manual", "titles": titles, "stages": stages, "force": force}
    if language:
        payload["language"] = language
    return client.start_execution(stateMachineArn=outputs["StateMachineArn"], name=name, input=json.dumps(payload))[
        "executionArn"
    ]


def cloud_catalog(env: str, *, outputs=None) -> DynamoCatalog:
    outputs = outputs or stack_outputs(env)
    return DynamoCatalog(outputs["CatalogTableName"])
