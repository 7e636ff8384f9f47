"""``PrismStage``: the stack wrapped as a CDK Stage, so a CDK Pipelines pipeline can deploy it per environment."""

from __future__ import annotations

from aws_cdk import Environment, Stage
from constructs import Construct

from cdk.config import EnvironmentConfig
from cdk.stack import PrismStack


class PrismStage(Stage):
    def __init__(self, scope: Construct, id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        super().__init__(scope, id, env=Environment(account=config.account, region=config.region), **kwargs)
        self.stack = PrismStack(self, "Prism", config=config, stack_name=config.stack_name)
        self.state_machine_arn_output = self.stack.orchestration.state_machine.state_machine_arn
