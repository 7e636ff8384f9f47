"""``SmokeTestAccess``: a role the tooling account's pipeline assumes to run its post-deploy smoke test.

The smoke test (``python -m prism.cloud.smoke``) starts a manual execution on a sample title and
reads its result; that is all this role may do. It trusts one principal: the pipeline's smoke-test
CodeBuild role (``aws:PrincipalArn``), not the whole tooling account. The trust names the account
with an ``aws:PrincipalArn`` condition rather than the role ARN itself, so recreating that role
does not silently break the trust (IAM pins a role-ARN principal to the role's unique id).
"""

from __future__ import annotations

from aws_cdk import Arn, ArnFormat, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_stepfunctions as sfn
from cdk_nag import NagSuppressions
from constructs import Construct


class SmokeTestAccess(Construct):
    def __init__(self, scope: Construct, id: str, *, caller_arn: str, role_name: str,
                 state_machine: sfn.IStateMachine) -> None:  # fmt: skip
        super().__init__(scope, id)
        stack = Stack.of(self)
        caller_account = Arn.split(caller_arn, ArnFormat.SLASH_RESOURCE_NAME).account
        self.role = iam.Role(
            self, "Role", role_name=role_name,
            assumed_by=iam.AccountPrincipal(caller_account).with_conditions(
                {"ArnEquals": {"aws:PrincipalArn": caller_arn}}),
            description="Prism pipeline smoke test: start a manual execution and read its result",
        )  # fmt: skip
        state_machine.grant_start_execution(self.role)
        machine_name = stack.split_arn(state_machine.state_machine_arn, ArnFormat.COLON_RESOURCE_NAME).resource_name
        executions = stack.format_arn(service="states", resource="execution",
                                      resource_name=f"{machine_name}:*", arn_format=ArnFormat.COLON_RESOURCE_NAME)  # fmt: skip
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["states:DescribeExecution", "states:StopExecution"], resources=[executions]))  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            self.role,
            [{"id": "AwsSolutions-IAM5", "reason": "Execution ARNs end in the execution's name, unknown until the "
              "smoke test starts it; the wildcard is limited to this state machine's executions.",
              "applies_to": [{"regex": "/^Resource::arn:.*:execution:.*:\\*$/g"}]}],
            apply_to_children=True,
        )  # fmt: skip
