"""CDK entry point (``cdk.json``): ``cdk synth -c env=dev`` for one environment, no ``env`` for all.

``-c account=123456789012`` overrides the configured account (dev's is taken from your
credentials through ``CDK_DEFAULT_ACCOUNT`` when not configured). ``-c nag=false`` skips the
cdk-nag checks (on by default: findings fail ``cdk synth``).
"""

from __future__ import annotations

import os

from aws_cdk import App, Aspects, Environment
from cdk_nag import AwsSolutionsChecks

from cdk.config import ENVIRONMENTS, EnvironmentConfig, load
from cdk.stack import PrismStack


def selected(app: App) -> list[EnvironmentConfig]:
    name = app.node.try_get_context("env")
    names = [name] if name else list(ENVIRONMENTS)
    configs = []
    for env_name in names:
        config = load(env_name)
        account = app.node.try_get_context("account") or config.account or os.environ.get("CDK_DEFAULT_ACCOUNT")
        configs.append(load(env_name, account=account) if account != config.account else config)
    return configs


def build(app: App) -> list[PrismStack]:
    stacks = [
        PrismStack(app, config.stack_name, config=config, stack_name=config.stack_name,
                   env=Environment(account=config.account, region=config.region),
                   description=f"Prism video preprocessing ({config.name})")
        for config in selected(app)
    ]  # fmt: skip
    if str(app.node.try_get_context("nag")).lower() != "false":
        Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return stacks


def main() -> None:
    app = App()
    build(app)
    app.synth()


if __name__ == "__main__":
    main()
