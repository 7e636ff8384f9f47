"""Post-deploy smoke test: a forced manual run on one small sample title must succeed.

``python -m prism.cloud.smoke --state-machine-arn ARN --title prism-smoke-sample [--role-arn ARN]``
starts ``{"mode": "manual", "titles": [title], "stages": [...], "force": true}`` (``force``, so a new
image really runs every stage instead of finding them up to date), polls the execution and exits
0 only if the execution succeeded and its summary lists the title as succeeded. The pipeline runs
it after deploying dev, from the tooling account, through the role the dev stack grants it.

The sample title must already be delivered (``<input bucket>/<input prefix><title>.mp4``); a
summary that lists it under ``not_found`` fails with that hint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from prism.cloud.ops import start_manual_run

logger = logging.getLogger("prism.smoke")
RUNNING = "RUNNING"


class SmokeTestFailed(Exception):
    """The run did not show the deployment working; the message says how."""


@dataclass(frozen=True)
class SmokeResult:
    execution_arn: str
    summary: dict


def run_smoke_test(
    sfn,
    state_machine_arn: str,
    title: str,
    stages: list[str],
    *,
    timeout_s: float,
    poll_s: float = 20,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SmokeResult:
    """Start the run and wait for it; raises :class:`SmokeTestFailed` unless the title succeeded."""
    arn = start_manual_run("smoke", [title], stages, True, sfn=sfn, outputs={"StateMachineArn": state_machine_arn})
    logger.info("started %s", arn)
    deadline = clock() + timeout_s
    while (execution := sfn.describe_execution(executionArn=arn))["status"] == RUNNING:
        if clock() >= deadline:
            sfn.stop_execution(executionArn=arn, error="SmokeTestTimeout", cause=f"no result within {timeout_s:.0f}s")
            raise SmokeTestFailed(f"{arn} still running after {timeout_s:.0f}s; stopped it")
        sleep(poll_s)
    status = execution["status"]
    if status != "SUCCEEDED":
        detail = ": ".join(x for x in (execution.get("error"), execution.get("cause")) if x)
        raise SmokeTestFailed(f"{arn} ended {status}" + (f" ({detail})" if detail else ""))
    summary = json.loads(execution.get("output") or "{}")
    if title in summary.get("not_found", []):
        raise SmokeTestFailed(f"sample title {title!r} is not in the input bucket; deliver it once (docs/deploy.md)")
    failed = [f for f in summary.get("failed", []) if f.get("title_id") == title]
    if failed:
        raise SmokeTestFailed(f"{title} failed: {failed[0].get('reason')}")
    if title not in summary.get("succeeded", []):
        raise SmokeTestFailed(f"{title} is not among the succeeded titles: {json.dumps(summary)}")
    return SmokeResult(arn, summary)


def stepfunctions_client(state_machine_arn: str, role_arn: str | None):
    """A client in the state machine's region, as ``role_arn`` when given (the pipeline's cross-account role)."""
    import boto3

    region = state_machine_arn.split(":")[3]
    if not role_arn:
        return boto3.client("stepfunctions", region_name=region)
    creds = boto3.client("sts", region_name=region).assume_role(RoleArn=role_arn, RoleSessionName="prism-smoke-test")
    c = creds["Credentials"]
    return boto3.client("stepfunctions", region_name=region, aws_access_key_id=c["AccessKeyId"],
                        aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])  # fmt: skip


def main(argv: list[str] | None = None, *, sfn=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prism.cloud.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--state-machine-arn", required=True, help="the stack's StateMachineArn output")
    parser.add_argument("--title", required=True, help="a short sample title delivered to the input bucket")
    parser.add_argument("--stages", default="", help="comma-separated; default every stage")
    parser.add_argument("--role-arn", default=None, help="assume this role first (the stack's SmokeTestRoleArn)")
    parser.add_argument("--timeout-minutes", type=float, default=50)
    parser.add_argument("--poll-seconds", type=float, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    try:
        client = sfn or stepfunctions_client(args.state_machine_arn, args.role_arn)
        result = run_smoke_test(client, args.state_machine_arn, args.title, stages,
                                timeout_s=args.timeout_minutes * 60, poll_s=args.poll_seconds)  # fmt: skip
    except SmokeTestFailed as exc:
        logger.error("smoke test failed: %s", exc)
        return 1
    logger.info("smoke test passed: %s %s", result.execution_arn, json.dumps(result.summary.get("counts", {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
