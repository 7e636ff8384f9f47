"""Key resources and properties of the synthesized stacks, and cdk-nag with zero unsuppressed findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk.assertions import Annotations, Match

from cdk.config import ENVIRONMENTS, StageSpec, load
from cdk.orchestration import stage_chains

ENVS = ["dev", "staging", "prod"]


def definition(template) -> dict:
    """The state machine's ASL with CloudFormation references replaced by placeholders."""
    (machine,) = template.find_resources("AWS::StepFunctions::StateMachine").values()
    parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "REF" for p in parts))


def all_states(states: dict) -> dict:
    found = dict(states)
    for state in states.values():
        for branch in state.get("Branches", []):
            found.update(all_states(branch["States"]))
        if "ItemProcessor" in state:
            found.update(all_states(state["ItemProcessor"]["States"]))
    return found


@pytest.mark.parametrize("env", ENVS)
def test_artifacts_bucket_is_encrypted_versioned_private_and_tls_only(synthesized, env):
    _, t = synthesized[env]
    t.has_resource_properties("AWS::S3::Bucket", {
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": Match.any_value()},
             "BucketKeyEnabled": True}]},
        "VersioningConfiguration": {"Status": "Enabled"},
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
        "LoggingConfiguration": Match.object_like({"LogFilePrefix": "artifacts/"}),
        "LifecycleConfiguration": {"Rules": Match.array_with([
            Match.object_like({"Id": "old-versions", "NoncurrentVersionExpiration": Match.any_value()}),
            Match.object_like({"Id": "run-items", "Prefix": "_prism/runs/"}),
        ])},
    })  # fmt: skip
    t.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})
    t.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


@pytest.mark.parametrize("env", ENVS)
def test_catalog_table_matches_the_dynamo_catalog_layout(synthesized, env):
    _, t = synthesized[env]
    t.has_resource_properties("AWS::DynamoDB::GlobalTable", {
        "KeySchema": [{"AttributeName": "title_id", "KeyType": "HASH"}, {"AttributeName": "record", "KeyType": "RANGE"}],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS"},
        "Replicas": [Match.object_like({"PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                                        "SSESpecification": {"KMSMasterKeyId": Match.any_value()}})],
        "GlobalSecondaryIndexes": [Match.object_like({"IndexName": "record-index", "KeySchema": [
            {"AttributeName": "record", "KeyType": "HASH"}, {"AttributeName": "title_id", "KeyType": "RANGE"}]})],
    })  # fmt: skip
    retain = ENVIRONMENTS[env].retain_data
    t.has_resource("AWS::DynamoDB::GlobalTable", {"DeletionPolicy": "Retain" if retain else "Delete"})


@pytest.mark.parametrize("env", ENVS)
def test_gpu_batch_spot_first_with_on_demand_fallback_scaling_to_zero(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    t.resource_count_is("AWS::Batch::ComputeEnvironment", 2)
    for kind in ("SPOT", "EC2"):
        t.has_resource_properties("AWS::Batch::ComputeEnvironment", {"ComputeResources": Match.object_like({
            "Type": kind, "MinvCpus": 0, "MaxvCpus": config.max_vcpus,
            "InstanceTypes": list(config.gpu_instance_types),
            "Ec2Configuration": [{"ImageType": "ECS_AL2_NVIDIA"}],
        })})  # fmt: skip
    queues = t.find_resources("AWS::Batch::JobQueue")
    assert sorted(q["Properties"]["Priority"] for q in queues.values()) == [10, 100]
    for queue in queues.values():
        orders = [c["Order"] for c in queue["Properties"]["ComputeEnvironmentOrder"]]
        assert orders == [1, 2]  # spot, then on-demand
    t.resource_count_is("AWS::EC2::NatGateway", 0)
    endpoints = t.find_resources("AWS::EC2::VPCEndpoint")
    services = json.dumps([e["Properties"]["ServiceName"] for e in endpoints.values()])
    for name in ("s3", "dynamodb", "ecr.api", "ecr.dkr", "logs", "ecs"):
        assert name in services


@pytest.mark.parametrize("env", ENVS)
def test_one_job_definition_per_stage_with_resources_timeout_and_retries(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    t.resource_count_is("AWS::Batch::JobDefinition", len(config.stages))
    for spec in config.stages:
        requirements = [{"Type": "MEMORY", "Value": str(spec.memory_mib)}, {"Type": "VCPU", "Value": str(int(spec.vcpus))}]
        if spec.gpus:
            requirements.append({"Type": "GPU", "Value": str(spec.gpus)})
        t.has_resource_properties("AWS::Batch::JobDefinition", {
            "ContainerProperties": Match.object_like({
                "Command": ["python", "-m", "prism.worker"],
                "Environment": Match.array_with([{"Name": "PRISM_STAGE", "Value": spec.name}]),
                "Image": Match.any_value(),
                "ResourceRequirements": Match.array_with(requirements),
            }),
            "Timeout": {"AttemptDurationSeconds": spec.timeout_minutes * 60},
            "RetryStrategy": {"Attempts": spec.attempts, "EvaluateOnExit": [
                {"Action": "RETRY", "OnStatusReason": "Host EC2*"},
                {"Action": "RETRY", "OnReason": "CannotPullContainerError:*"},
                {"Action": "RETRY", "OnExitCode": "75"},
                {"Action": "EXIT", "OnReason": "*"},
            ]},
        })  # fmt: skip


@pytest.mark.parametrize("env", ENVS)
def test_state_machine_maps_titles_and_runs_stage_chains_in_parallel(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    t.has_resource_properties("AWS::StepFunctions::StateMachine", {
        "TracingConfiguration": {"Enabled": True},
        "LoggingConfiguration": Match.object_like({"Level": "ALL"}),
    })  # fmt: skip
    asl = definition(t)
    titles = asl["States"]["Titles"]
    assert titles["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert titles["MaxConcurrency"] == config.max_concurrent_titles
    assert titles["ItemReader"]["Resource"].endswith(":s3:getObject")
    states = all_states(asl["States"])
    (parallel,) = [s for s in states.values() if s["Type"] == "Parallel"]
    assert len(parallel["Branches"]) == len(stage_chains(config.stages)) == 3  # visual chain, cues, audio
    jobs = {n: s for n, s in states.items() if s.get("Resource", "").endswith(":batch:submitJob.sync")}
    assert sorted(jobs) == sorted(f"{s.name} job" for s in config.stages)
    for job in jobs.values():
        assert job["Parameters"]["JobQueue.$"] == "$.title.job_queue"
        assert job["Catch"][0]["ErrorEquals"] == ["States.ALL"]
        assert job["Retry"][0]["ErrorEquals"][0].startswith("Batch.")
    assert "Summarise" in asl["States"] and "Save watermark" in asl["States"]
    assert states["Finalize title"]["Catch"][0]["Next"] == "Record finalize failure"


def test_stage_chains_follow_the_stage_graph():
    chains = [[s.name for s in c] for c in stage_chains(load("dev").stages)]
    assert chains == [["shots", "keyframes", "embeddings"], ["cues"], ["audio"]]
    extra = (StageSpec("a"), StageSpec("b"), StageSpec("c", requires=("a", "b")))
    assert [[s.name for s in c] for c in stage_chains(extra)] == [["a", "b", "c"]]


def test_config_stage_graph_agrees_with_the_stage_registry():
    from prism.stages import registry

    stages = registry()
    config = {s.name: s for s in load("dev").stages}
    for name, cls in stages.items():
        assert name in config, f"stage {name} is registered but not deployed"
        assert set(config[name].requires) == set(cls.requires)


@pytest.mark.parametrize("env", ENVS)
def test_schedule_events_and_alarms(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    t.has_resource_properties("AWS::Scheduler::Schedule", {
        "ScheduleExpression": config.schedule_expression,
        "ScheduleExpressionTimezone": config.schedule_time_zone,
        "Target": Match.object_like({"Input": json.dumps({"mode": "scheduled"}, separators=(",", ":"))}),
    })  # fmt: skip
    t.has_resource_properties("AWS::Events::EventBus", {"Name": f"prism-{env}"})
    t.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    t.resource_count_is("AWS::CloudWatch::Alarm", 4)
    t.has_resource_properties("AWS::Events::Rule", {"EventPattern": Match.object_like({
        "source": ["aws.batch"], "detail": Match.object_like({"status": ["FAILED"]})})})
    t.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    outputs = t.find_outputs("*")
    assert {"StateMachineArn", "CatalogTableName", "ArtifactsBucketName"} <= set(outputs)


@pytest.mark.parametrize("env", ENVS)
def test_lambdas_use_powertools_layer_and_no_docker_bundling(synthesized, env):
    _, t = synthesized[env]
    t.resource_count_is("AWS::Lambda::Function", 4)
    for handler in ("discover.handler", "finalize.handler", "record_failure.handler", "summarise.handler"):
        t.has_resource_properties("AWS::Lambda::Function", {
            "Handler": handler, "Runtime": "python3.13",
            "Layers": [Match.string_like_regexp(r"arn:aws:lambda:.*:017000801446:layer:AWSLambdaPowertoolsPythonV3")],
            "TracingConfig": {"Mode": "Active"},
        })  # fmt: skip


@pytest.mark.parametrize("env", ENVS)
def test_iam_policies_name_exact_actions(synthesized, env):
    _, t = synthesized[env]
    for policy in t.find_resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not [a for a in actions if "*" in a], statement


@pytest.mark.parametrize("env", ENVS)
def test_cdk_nag_aws_solutions_has_no_unsuppressed_findings(synthesized, env):
    stack, _ = synthesized[env]
    annotations = Annotations.from_stack(stack)
    errors = annotations.find_error("*", Match.string_like_regexp(r"AwsSolutions-.*"))
    warnings = annotations.find_warning("*", Match.string_like_regexp(r"AwsSolutions-.*|CdkNagValidationFailure.*"))
    assert [f"{e.id}: {e.entry.data}" for e in errors] == []
    assert [f"{w.id}: {w.entry.data}" for w in warnings] == []


def test_every_suppression_names_a_rule_and_a_reason(synthesized):
    stack, _ = synthesized["dev"]
    template = stack.node.root.synth().get_stack_by_name(stack.stack_name).template
    found = 0
    for resource in template["Resources"].values():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found += 1
            assert rule["id"].startswith(("AwsSolutions-", "CdkNagValidationFailure")) and len(rule["reason"]) > 20
    assert found > 0


@pytest.mark.parametrize("env", ENVS)
def test_synthesis_needs_no_context_lookups(synthesized, env):
    """No AZ/VPC lookups: ``cdk synth`` works without AWS credentials (and without Docker)."""
    stack, _ = synthesized[env]
    assembly = stack.node.root.synth()
    manifest = json.loads((Path(assembly.directory) / "manifest.json").read_text())
    assert not manifest.get("missing")
    assert stack.availability_zones == list(ENVIRONMENTS[env].availability_zones)
