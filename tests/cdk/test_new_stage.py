"""A stage registered in one file (tests/plugin_stage.py) deploys as its own Batch job, no config edit."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from aws_cdk import App
from aws_cdk.assertions import Annotations, Match, Template

from cdk.app import build
from cdk.config import ENVIRONMENTS, JobSpec, load

PLUGIN = Path(__file__).resolve().parents[1] / "plugin_stage.py"


@pytest.fixture
def shot_tone(monkeypatch):
    from prism.stages import base

    spec = importlib.util.spec_from_file_location("prism_test_plugin_stage", PLUGIN)
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    base.registry()
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    base.register(module.ShotToneStage)
    return module.ShotToneStage


def test_a_registered_stage_in_no_job_group_becomes_its_own_job(shot_tone):
    configured = [j.name for j in ENVIRONMENTS["dev"].jobs]
    (home,) = [j.name for j in ENVIRONMENTS["dev"].jobs if "shots" in j.stages]
    config = load("dev")
    assert [j.name for j in config.jobs] == [*configured, "shot_tone"]
    assert config.jobs[-1] == JobSpec("shot_tone", ("shot_tone",), requires=(home,))  # after the job with shots
    assert list(config.stage_graph())[-1] == "shot_tone" and config.stage_graph()["shot_tone"] == ["shots"]

    app = App(context={"env": "dev", "account": "123456789012"})
    (stack,) = build(app)
    template = Template.from_stack(stack)
    definitions = {
        {e["Name"]: e["Value"] for e in d["Properties"]["ContainerProperties"]["Environment"]}["PRISM_JOB"]: d
        for d in template.find_resources("AWS::Batch::JobDefinition").values()
    }
    assert sorted(definitions) == sorted([*configured, "shot_tone"])
    container = definitions["shot_tone"]["Properties"]["ContainerProperties"]
    variables = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert variables["PRISM_STAGES"] == "shot_tone"
    assert {"Type": "GPU", "Value": "1"} in container["ResourceRequirements"]

    (machine,) = template.find_resources("AWS::StepFunctions::StateMachine").values()
    asl = "".join(p if isinstance(p, str) else "REF" for p in machine["Properties"]["DefinitionString"]["Fn::Join"][1])
    assert '"shot_tone job"' in asl and '"Run shot_tone?"' in asl
    discover = [
        f["Properties"]["Environment"]["Variables"]
        for f in template.find_resources("AWS::Lambda::Function").values()
        if "PRISM_JOBS" in f["Properties"].get("Environment", {}).get("Variables", {})
    ]
    jobs = json.loads(discover[0]["PRISM_JOBS"])
    assert jobs["shot_tone"] == {"stages": ["shot_tone"], "requires": [home], "timeout_minutes": 30}  # JobSpec default
    assert json.loads(discover[0]["PRISM_STAGE_GRAPH"])["shot_tone"] == ["shots"]
    errors = Annotations.from_stack(stack).find_error("*", Match.string_like_regexp(r"AwsSolutions-.*"))
    assert not errors, errors  # cdk-nag is as happy with the new job as with the configured ones
