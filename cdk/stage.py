"""``PrismStage``: the stack wrapped as a CDK Stage, so a CDK Pipelines pipeline can deploy it per environment."""

from __future__ import annotations

from aws_cdk import Aspects, Environment, Stage
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from cdk.config import EnvironmentConfig
from cdk.stack import PrismStack


class PrismStage(Stage):
    """cdk-nag runs inside the stage: aspects applied to the App stop at Stage boundaries."""

    def __init__(self, scope: Construct, id: str, *, config: EnvironmentConfig, nag: bool = True, **kwargs) -> None:
        super().__init__(scope, id, env=Environment(account=config.account, region=config.region), **kwargs)
        self.stack = PrismStack(
            self, "Prism", config=config, stack_name=config.stack_name,
            description=f"Prism video preprocessing ({config.name})",
        )  # fmt: skip
        if nag:
            Aspects.of(self).add(AwsSolutionsChecks(verbose=True))
        self.outputs = self.stack.outputs  # CfnOutputs, for a pipeline step's ``env_from_cfn_outputs``
