"""Synthesize each environment's stack once (Python ``App().synth()``; no cdk CLI, no Docker)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


@pytest.fixture(scope="session")
def synthesized():
    """env name -> (stack, Template); cdk-nag runs as the app's aspect, as in ``cdk synth``."""
    from aws_cdk import App
    from aws_cdk.assertions import Template

    from cdk.app import build

    out = {}
    for env in ("dev", "staging", "prod"):
        app = App(context={"env": env, "account": "123456789012"})
        (stack,) = build(app)
        out[env] = (stack, Template.from_stack(stack))
    return out
