"""The CI/CD pipeline's structure (stages in order, approvals, the test step, the smoke test, cross-account) and cdk-nag."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from aws_cdk.assertions import Annotations, Match, Template

from cdk.config import ENVIRONMENTS, PIPELINE
from cdk.pipeline import CI_COMMAND

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def pipeline():
    """(stack, Template, the CodePipeline resource's stages) for the pipeline app, as its synth step runs it."""
    from aws_cdk import App

    from cdk.pipeline_app import build

    flags = json.loads((ROOT / "cdk.json").read_text())["context"]  # the feature flags `cdk synth` applies
    app = App(context={**flags, "image_tag": COMMIT})
    stack = build(app)
    template = Template.from_stack(stack)
    (resource,) = template.find_resources("AWS::CodePipeline::Pipeline").values()
    return stack, template, resource["Properties"]["Stages"]


def actions(stages, name: str) -> list[dict]:
    (stage,) = [s for s in stages if s["Name"] == name]
    return sorted(stage["Actions"], key=lambda a: a["RunOrder"])


def buildspec(template, project_id_prefix: str) -> dict:
    projects = {k: v for k, v in template.find_resources("AWS::CodeBuild::Project").items()
                if k.startswith(project_id_prefix)}  # fmt: skip
    (project,) = projects.values()
    return json.loads(project["Properties"]["Source"]["BuildSpec"])


def test_stages_in_order(pipeline):
    _, _, stages = pipeline
    assert [s["Name"] for s in stages] == [
        "Source",
        "Build",
        "UpdatePipeline",
        "Assets",
        "Image",
        "dev",
        "staging",
        "prod",
    ]
    (source,) = actions(stages, "Source")
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    assert source["Configuration"] == {"ConnectionArn": PIPELINE.connection_arn, "FullRepositoryId": PIPELINE.repository,
                                       "BranchName": PIPELINE.branch, "DetectChanges": True}  # fmt: skip
    assert [a["Name"] for a in actions(stages, "UpdatePipeline")] == ["SelfMutate"]


def test_dev_deploys_automatically_then_smoke_tests_and_staging_and_prod_wait_for_approval(pipeline):
    _, _, stages = pipeline
    dev = actions(stages, "dev")
    assert [a["ActionTypeId"]["Provider"] for a in dev] == ["CloudFormation", "CloudFormation", "CodeBuild"]
    assert [a["Name"] for a in dev] == ["Prism-dev.Prepare", "Prism-dev.Deploy", "SmokeTest-dev"]
    for env in ("staging", "prod"):
        approve, prepare, deploy = actions(stages, env)
        assert approve["ActionTypeId"] == {"Category": "Approval", "Owner": "AWS", "Provider": "Manual", "Version": "1"}
        assert approve["RunOrder"] < prepare["RunOrder"] < deploy["RunOrder"]
        assert deploy["Configuration"]["StackName"] == ENVIRONMENTS[env].stack_name


def test_the_synth_step_runs_ci_run_before_cdk_synth(pipeline):
    _, template, stages = pipeline
    (synth,) = actions(stages, "Build")
    spec = buildspec(template, "PipelineBuildSynth")
    commands = spec["phases"]["build"]["commands"]
    assert commands[0] == CI_COMMAND == "bash .ci/run"
    assert "cdk" in commands[1] and " synth " in commands[1] and "cdk.pipeline_app" in commands[1]
    assert '-c image_tag="$IMAGE_TAG"' in commands[1]
    assert spec["artifacts"]["base-directory"] == "cdk.out"
    env = json.loads(synth["Configuration"]["EnvironmentVariables"])
    assert {"name": "IMAGE_TAG", "type": "PLAINTEXT", "value": "#{Source@example-org_prism.CommitId}"} in env


def test_ci_run_is_setup_lint_format_types_then_the_test_command():
    """What the synth step runs, spelled out: a change to .ci/run changes the pipeline's test step with it."""
    lines = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert [ln.split("  #")[0] for ln in lines[-6:]] == [
        "bash scripts/setup.sh",
        "echo '[]' | node tools/iam/simulate.mjs >/dev/null",  # the IAM harness's simulator is installed
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy prism",  # settings in pyproject.toml
        ".venv/bin/python -m pytest -q",
    ]
    assert f"```bash\n{lines[-1]}\n```" in (ROOT / "README.md").read_text()  # the README's test command


def test_worker_image_is_built_privileged_and_tagged_with_the_commit(pipeline):
    _, template, stages = pipeline
    (image,) = actions(stages, "Image")
    env = json.loads(image["Configuration"]["EnvironmentVariables"])
    assert {"name": "IMAGE_TAG", "type": "PLAINTEXT", "value": "#{Source@example-org_prism.CommitId}"} in env
    assert buildspec(template, "PipelineImageBuildWorkerImage")["phases"]["build"]["commands"] == [
        "bash containers/publish.sh"
    ]
    template.has_resource_properties("AWS::CodeBuild::Project", {"Environment": Match.object_like({
        "PrivilegedMode": True,
        "EnvironmentVariables": Match.array_with([Match.object_like({"Name": "IMAGE_REPOSITORY_URI"})])})})  # fmt: skip
    template.has_resource_properties("AWS::ECR::Repository", {
        "RepositoryName": PIPELINE.image_repository, "ImageTagMutability": "IMMUTABLE",
        "ImageScanningConfiguration": {"ScanOnPush": True},
        "RepositoryPolicyText": {"Statement": [Match.object_like({
            "Sid": "EnvironmentsPull", "Effect": "Allow",
            "Principal": {"AWS": [Match.object_like({"Fn::Join": ["", Match.array_with([f":iam::{a}:root"])]})
                                  for a in ("111111111111", "222222222222", "333333333333")]}})]},
    })  # fmt: skip
    template.has_resource("AWS::ECR::Repository", {"DeletionPolicy": "Retain"})
    assert (ROOT / "containers/publish.sh").exists()


def test_the_base_image_comes_through_an_ecr_pull_through_cache(pipeline):
    _, template, _ = pipeline
    template.has_resource_properties("AWS::ECR::PullThroughCacheRule", {
        "EcrRepositoryPrefix": "docker-hub", "UpstreamRegistryUrl": "registry-1.docker.io",
        "CredentialArn": PIPELINE.docker_hub_secret_arn})  # fmt: skip
    (project,) = [p for k, p in template.find_resources("AWS::CodeBuild::Project").items()
                  if k.startswith("PipelineImageBuildWorkerImage")]  # fmt: skip
    registry = {e["Name"]: e["Value"] for e in project["Properties"]["Environment"]["EnvironmentVariables"]}[
        "BASE_REGISTRY"
    ]
    assert json.dumps(registry).count(f"{PIPELINE.account}.dkr.ecr.{PIPELINE.region}.") == 1
    assert json.dumps(registry).endswith('/docker-hub"]]}')
    dockerfile = (ROOT / "containers/Dockerfile").read_text()
    # Docker Hub's official images sit under library/ (what the pull-through cache path needs); CUDA comes from
    # torch's wheels, not a CUDA base (tests/test_image_dependencies.py)
    assert "ARG BASE_IMAGE=${BASE_REGISTRY}/library/ubuntu:24.04" in dockerfile
    assert '--build-arg "BASE_REGISTRY=' in (ROOT / "containers/publish.sh").read_text()


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_every_environment_runs_the_commits_image_from_the_tooling_repository(pipeline, env):
    stack, _, _ = pipeline
    stage_stack = stack.stages[env].stack
    t = Template.from_stack(stage_stack)
    t.has_resource_properties("AWS::Batch::JobDefinition", {"ContainerProperties": Match.object_like({
        "Image": {"Fn::Join": ["", [f"{PIPELINE.account}.dkr.ecr.{PIPELINE.region}.", {"Ref": "AWS::URLSuffix"},
                                    f"/{PIPELINE.image_repository}:{COMMIT}"]]}})})  # fmt: skip
    t.has_output("ImageTag", {"Value": COMMIT})
    assert stage_stack.account == (ENVIRONMENTS[env].account or "111111111111")
    # The pipeline version is the package's, not the commit: a commit alone does not reprocess every title.
    assert stage_stack.config.pipeline_version == "0.1.0" != stage_stack.config.image_tag


def test_smoke_test_after_dev_uses_the_state_machine_output_through_the_dev_role(pipeline):
    stack, template, stages = pipeline
    smoke = actions(stages, "dev")[-1]
    env = {e["name"]: e["value"] for e in json.loads(smoke["Configuration"]["EnvironmentVariables"])}
    namespace = stack.stages["dev"].stack.artifact_id
    assert env["STATE_MACHINE_ARN"] == f"#{{{namespace}.StateMachineArn}}"
    assert env["SMOKE_TEST_ROLE_ARN"] == f"#{{{namespace}.SmokeTestRoleArn}}"
    (deploy,) = [a for a in actions(stages, "dev") if a["Name"] == "Prism-dev.Deploy"]
    assert deploy["Namespace"] == namespace
    (command,) = buildspec(template, "PipelinedevSmokeTest")["phases"]["build"]["commands"]
    argv = shlex.split(command)
    assert argv[:3] == ["python3", "-m", "prism.cloud.smoke"]
    assert argv[argv.index("--title") + 1] == PIPELINE.smoke_title
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([{
        "Action": "sts:AssumeRole", "Effect": "Allow",
        "Resource": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::111111111111:role/prism-dev-smoke-test"]]},
    }])}})  # fmt: skip
    # Only dev grants the tooling account a smoke-test role, and only to start and read executions.
    dev = Template.from_stack(stack.stages["dev"].stack)
    # It trusts the smoke-test step's CodeBuild role, not the whole tooling account.
    caller = f"arn:aws:iam::{PIPELINE.account}:role/{PIPELINE.smoke_test_caller_role_name}"
    dev.has_resource_properties("AWS::IAM::Role", {
        "RoleName": "prism-dev-smoke-test",
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Principal": {"AWS": Match.object_like({"Fn::Join": ["", Match.array_with([f":iam::{PIPELINE.account}:root"])]})},
            "Condition": {"ArnEquals": {"aws:PrincipalArn": caller}}})]},
    })  # fmt: skip
    roles = template.find_resources(
        "AWS::IAM::Role", {"Properties": {"RoleName": PIPELINE.smoke_test_caller_role_name}}
    )
    (caller_role,) = roles
    (project,) = [
        p for k, p in template.find_resources("AWS::CodeBuild::Project").items() if k.startswith("PipelinedevSmokeTest")
    ]
    assert project["Properties"]["ServiceRole"] == {"Fn::GetAtt": [caller_role, "Arn"]}
    actions_granted = set()
    for policy in dev.find_resources("AWS::IAM::Policy").values():
        if "SmokeTest" in json.dumps(policy["Properties"]["Roles"]):
            for st in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions_granted |= set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    assert actions_granted == {"states:StartExecution", "states:DescribeExecution", "states:StopExecution"}
    for env in ("staging", "prod"):
        Template.from_stack(stack.stages[env].stack).resource_properties_count_is(
            "AWS::IAM::Role", {"RoleName": Match.string_like_regexp("smoke")}, 0
        )


def test_the_source_action_may_use_a_codeconnections_connection(pipeline):
    """``arn:aws:codeconnections:`` connections need ``codeconnections:UseConnection`` (cfn-lint I3510)."""
    _, template, stages = pipeline
    (source,) = actions(stages, "Source")
    granted = set()
    for policy in template.find_resources("AWS::IAM::Policy").values():
        if {"Fn::GetAtt": [policy["Properties"]["Roles"][0]["Ref"], "Arn"]} != source["RoleArn"]:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Resource"] == PIPELINE.connection_arn:
                granted |= set(statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    assert PIPELINE.connection_arn.startswith("arn:aws:codeconnections:")
    assert {"codeconnections:UseConnection", "codestar-connections:UseConnection"} <= granted


def test_the_notifications_key_serves_codestar_notifications_only_for_this_account(pipeline):
    _, template, _ = pipeline
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([Match.object_like({
        "Principal": {"Service": "codestar-notifications.amazonaws.com"},
        "Condition": {"StringEquals": {"aws:SourceAccount": PIPELINE.account}}})])}})  # fmt: skip


def test_cross_account_deployment_through_bootstrap_roles(pipeline):
    _, template, stages = pipeline
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True, "KeyPolicy": Match.any_value()})
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": Match.any_value()}}
                ]
            }
        },
    )
    for env, account in (("dev", "111111111111"), ("staging", "222222222222"), ("prod", "333333333333")):
        for action in actions(stages, env):
            if action["ActionTypeId"]["Provider"] == "CloudFormation":
                role = json.dumps(action["RoleArn"])
                assert f":iam::{account}:role/cdk-hnb659fds-deploy-role-{account}-{PIPELINE.region}" in role
    assert ENVIRONMENTS["dev"].account is None  # laptop deploys keep using the credentials' account


def test_notifications_for_approvals_and_failures(pipeline):
    _, template, _ = pipeline
    template.has_resource_properties("AWS::CodeStarNotifications::NotificationRule", {
        "EventTypeIds": Match.array_with(["codepipeline-pipeline-manual-approval-needed",
                                          "codepipeline-pipeline-pipeline-execution-failed"]),
        "Targets": [Match.object_like({"TargetType": "SNS"})],
    })  # fmt: skip
    template.has_resource_properties("AWS::SNS::Topic", {"TopicName": PIPELINE.approval_topic_name,
                                                         "KmsMasterKeyId": Match.any_value()})  # fmt: skip
    template.resource_count_is("AWS::SNS::Subscription", len(PIPELINE.approval_emails))


def test_pipeline_stack_does_not_change_with_the_commit(pipeline):
    """Nothing per commit in the pipeline's own template, or self-mutation would restart every execution."""
    _, template, _ = pipeline
    assert COMMIT not in json.dumps(template.to_json())


def test_config_rejects_a_stage_without_an_account_and_unknown_environments():
    with pytest.raises(ValueError, match="account"):
        replace(PIPELINE, stages=(replace(PIPELINE.stages[0], account=None),))
    with pytest.raises(ValueError, match="distinct environments"):
        replace(PIPELINE, stages=(*PIPELINE.stages, PIPELINE.stages[0]))


def test_cdk_nag_aws_solutions_has_no_unsuppressed_findings(pipeline):
    stack, _, _ = pipeline
    for scope in (stack, *(s.stack for s in stack.stages.values())):
        annotations = Annotations.from_stack(scope)
        errors = annotations.find_error("*", Match.string_like_regexp(r"AwsSolutions-.*"))
        warnings = annotations.find_warning("*", Match.string_like_regexp(r"AwsSolutions-.*|CdkNagValidationFailure.*"))
        assert [f"{e.id}: {e.entry.data}" for e in errors] == [], scope.stack_name
        assert [f"{w.id}: {w.entry.data}" for w in warnings] == [], scope.stack_name


def test_every_pipeline_suppression_names_a_rule_and_a_reason(pipeline):
    _, template, _ = pipeline
    found = 0
    for resource in template.to_json()["Resources"].values():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found += 1
            assert rule["id"].startswith("AwsSolutions-") and len(rule["reason"]) > 20
    assert found
