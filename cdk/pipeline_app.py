"""The pipeline's CDK app: ``cdk synth --app "python -m cdk.pipeline_app" [-c image_tag=<commit>]``.

A separate entry point from ``cdk.app`` (``cdk.json``), which stays the laptop deploy of one
environment. This app holds the tooling account's pipeline stack, and inside it one stage per
environment it promotes through (``cdk/config.py`` ``PIPELINE``). The pipeline's synth step passes
the commit id as ``image_tag``; without it the templates name the ``unversioned`` tag, which is
fine for the one-off ``cdk deploy`` that creates the pipeline (its first run re-synthesizes).

The pipeline version that ``discover`` compares is the ``prism-video`` version in pyproject.toml,
not the image tag: a commit rebuilds the image, but only a version bump reprocesses every
delivered title (``-c version=...`` overrides it).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from aws_cdk import App, Aspects, Environment
from cdk_nag import AwsSolutionsChecks

from cdk.config import PIPELINE, PipelineConfig
from cdk.pipeline import PrismPipelineStack

ROOT = Path(__file__).resolve().parent.parent
UNVERSIONED = "unversioned"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build(app: App, config: PipelineConfig = PIPELINE) -> PrismPipelineStack:
    nag = str(app.node.try_get_context("nag")).lower() != "false"
    stack = PrismPipelineStack(
        app, config.stack_name, config=config, stack_name=config.stack_name,
        env=Environment(account=config.account, region=config.region),
        image_tag=app.node.try_get_context("image_tag") or UNVERSIONED,
        version=app.node.try_get_context("version") or project_version(),
        nag=nag, description="Prism CI/CD: test, build the worker image, promote dev -> staging -> prod",
    )  # fmt: skip
    if nag:
        Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return stack


def main() -> None:
    app = App()
    build(app)
    app.synth()


if __name__ == "__main__":
    main()
