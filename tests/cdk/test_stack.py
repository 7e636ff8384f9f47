"""Key resources and properties of the synthesized stacks, and cdk-nag with zero unsuppressed findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk.assertions import Annotations, Match

from cdk.config import (
    ENVIRONMENTS,
    SPLIT_JOBS,
    JobSpec,
    check_jobs,
    load,
    registered_stage_graph,
    with_default_jobs,
)
from cdk.orchestration import job_chains

ENVS = ["dev", "staging", "prod"]


def definition(template) -> dict:
    """The state machine's ASL with CloudFormation references replaced by placeholders."""
    (machine,) = template.find_resources("AWS::StepFunctions::StateMachine").values()
    parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "REF" for p in parts))


def stack_of(config):
    """A one-off stack for a config variant (the session fixture covers the configured environments)."""
    from aws_cdk import App, Environment

    from cdk.stack import PrismStack

    return PrismStack(App(), "Variant", config=config, env=Environment(account=config.account, region=config.region))


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
    t.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            }
        },
    )
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
def test_buckets_empty_themselves_on_delete_only_where_data_is_not_retained(synthesized, env):
    """A non-empty bucket cannot be deleted: a dev stack would fail to destroy and leave its buckets behind."""
    retain = ENVIRONMENTS[env].retain_data
    _, t = synthesized[env]
    buckets = t.find_resources("AWS::S3::Bucket")
    emptied = t.find_resources("Custom::S3AutoDeleteObjects")
    assert len(buckets) == 2 and len(emptied) == (0 if retain else 2)
    for bucket in buckets.values():
        assert bucket["DeletionPolicy"] == ("Retain" if retain else "Delete")


@pytest.mark.parametrize("env", ENVS)
def test_gpu_batch_on_al2023_nvidia_scaling_to_zero_within_one_vcpu_cap(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    environments = t.find_resources("AWS::Batch::ComputeEnvironment")
    assert len(environments) == 2
    resources = {e["Properties"]["ComputeResources"]["Type"]: e["Properties"]["ComputeResources"]
                 for e in environments.values()}  # fmt: skip
    assert sorted(resources) == ["EC2", "SPOT"]
    for compute in resources.values():
        assert compute["MinvCpus"] == 0 and compute["InstanceTypes"] == list(config.gpu_instance_types)
        assert compute["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}]  # AL2 is past end of support
    # spot and on-demand share the cap: falling back never doubles it
    assert resources["SPOT"]["MaxvCpus"] + resources["EC2"]["MaxvCpus"] == config.max_vcpus
    assert min(r["MaxvCpus"] for r in resources.values()) >= max(j.vcpus for j in config.jobs)
    t.resource_count_is("AWS::EC2::NatGateway", 0)
    endpoints = t.find_resources("AWS::EC2::VPCEndpoint")
    services = json.dumps([e["Properties"]["ServiceName"] for e in endpoints.values()])
    for name in ("s3", "dynamodb", "ecr.api", "ecr.dkr", "logs", "ecs"):
        assert name in services


def _queues(template) -> dict[int, dict]:
    """Priority -> queue properties, with each compute environment reference replaced by SPOT or EC2."""
    kinds = {k: v["Properties"]["ComputeResources"]["Type"]
             for k, v in template.find_resources("AWS::Batch::ComputeEnvironment").items()}  # fmt: skip
    queues = {}
    for queue in template.find_resources("AWS::Batch::JobQueue").values():
        props = dict(queue["Properties"])
        props["order"] = [kinds[c["ComputeEnvironment"].get("Ref") or c["ComputeEnvironment"]["Fn::GetAtt"][0]]
                          for c in sorted(props["ComputeEnvironmentOrder"], key=lambda c: c["Order"])]  # fmt: skip
        queues[props["Priority"]] = props
    return queues


@pytest.mark.parametrize("env", ENVS)
def test_spot_queue_gives_up_on_short_capacity_and_the_job_runs_on_demand(synthesized, env):
    """A queue moves to its next environment only when the first is full or INVALID, not when Spot is short."""
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    queues = _queues(t)
    assert {p: q["order"] for p, q in queues.items()} == {100: ["EC2", "SPOT"], 10: ["SPOT", "EC2"], 50: ["EC2"]}
    assert queues[10]["JobStateTimeLimitActions"] == [{
        "Action": "CANCEL", "MaxTimeSeconds": config.spot_wait_minutes * 60,
        "Reason": "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", "State": "RUNNABLE"}]  # fmt: skip
    states = all_states(definition(t)["States"])
    for spec in config.jobs:
        job = states[f"{spec.name} job"]
        assert [c["ErrorEquals"] for c in job["Catch"]] == [["States.TaskFailed"], ["States.ALL"]]
        choice = states[job["Catch"][0]["Next"]]
        assert choice["Choices"][1] == {"Variable": "$.error.Cause", "StringMatches": "*INSUFFICIENT_INSTANCE_CAPACITY*",
                                        "Next": f"{spec.name} job on demand"}  # fmt: skip
        assert choice["Default"] == job["Catch"][1]["Next"]  # any other failure is recorded as before
        on_demand = states[f"{spec.name} job on demand"]
        assert "JobQueue.$" not in on_demand["Parameters"] and on_demand["Parameters"]["JobQueue"] == "REF"
        assert on_demand["Parameters"]["JobDefinition"] == job["Parameters"]["JobDefinition"]
        assert on_demand["Next"] == job["Next"] and on_demand["Catch"][0]["Next"] == job["Catch"][1]["Next"]


def test_without_spot_there_is_one_on_demand_environment_and_no_fallback():
    from aws_cdk.assertions import Template

    t = Template.from_stack(stack_of(load("dev", account="123456789012", spot=False)))
    (compute,) = t.find_resources("AWS::Batch::ComputeEnvironment").values()
    assert compute["Properties"]["ComputeResources"]["MaxvCpus"] == ENVIRONMENTS["dev"].max_vcpus
    assert {p: q["order"] for p, q in _queues(t).items()} == {100: ["EC2"], 10: ["EC2"]}
    assert not [n for n in all_states(definition(t)["States"]) if n.endswith("on demand")]


def test_the_vcpu_split_must_fit_the_largest_job():
    with pytest.raises(ValueError, match="each part must fit the largest job"):
        load("dev", max_vcpus=32, on_demand_max_vcpus=24)  # spot would get 8 < 16 (the title job)
    assert load("dev", max_vcpus=32, on_demand_max_vcpus=16).on_demand_vcpus == 16


@pytest.mark.parametrize("env", ENVS)
def test_one_job_definition_per_job_with_its_stages_resources_timeout_and_retries(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    t.resource_count_is("AWS::Batch::JobDefinition", len(config.jobs))
    for spec in config.jobs:
        requirements = [
            {"Type": "MEMORY", "Value": str(spec.memory_mib)},
            {"Type": "VCPU", "Value": str(int(spec.vcpus))},
        ]
        if spec.gpus:
            requirements.append({"Type": "GPU", "Value": str(spec.gpus)})
        t.has_resource_properties("AWS::Batch::JobDefinition", {
            "ContainerProperties": Match.object_like({
                "Command": ["python", "-m", "prism.cloud.worker"],
                "Environment": Match.array_with([{"Name": "PRISM_JOB", "Value": spec.name},
                                                 {"Name": "PRISM_STAGES", "Value": ",".join(spec.stages)}]),
                "Image": Match.any_value(),
                "ResourceRequirements": Match.array_with(requirements),
            }),
            "Timeout": {"AttemptDurationSeconds": spec.timeout_minutes * 60},
            "RetryStrategy": {"Attempts": spec.attempts, "EvaluateOnExit": [
                {"Action": "RETRY", "OnStatusReason": "Host EC2*"},
                {"Action": "RETRY", "OnReason": "CannotPullContainerError:*"},
                {"Action": "RETRY", "OnExitCode": "75"},
                {"Action": "RETRY", "OnExitCode": "76"},
                {"Action": "EXIT", "OnReason": "*"},
            ]},
        })  # fmt: skip
    for name, job_definition in t.find_resources("AWS::Batch::JobDefinition").items():
        # a deploy with a new image tag must not deregister the revision that jobs in flight use
        assert job_definition["Properties"]["ResourceRetentionPolicy"] == {"SkipDeregisterOnUpdate": True}, name


@pytest.mark.parametrize("env", ENVS)
def test_the_visual_stages_share_one_gpu_job_that_decodes_with_nvdec(synthesized, env):
    """One download and one decode for shots, keyframes and cues; NVDEC only where there is a GPU."""
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    (visual,) = [j for j in config.jobs if "shots" in j.stages]
    assert {"shots", "keyframes", "cues"} <= set(visual.stages) and visual.gpus >= 1 and visual.vcpus >= 8
    for definition_ in t.find_resources("AWS::Batch::JobDefinition").values():
        container = definition_["Properties"]["ContainerProperties"]
        env_vars = {e["Name"]: e["Value"] for e in container["Environment"]}
        gpus = [r for r in container["ResourceRequirements"] if r["Type"] == "GPU"]
        if env_vars["PRISM_JOB"] == visual.name:
            assert env_vars["PRISM_HWACCEL"] == "cuda"
        if "PRISM_HWACCEL" in env_vars:
            assert gpus, "ffmpeg fails (no software fallback) when the CUDA device cannot be created"


@pytest.mark.parametrize("env", ENVS)
def test_state_machine_maps_titles_and_runs_job_chains_in_parallel(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    t.has_resource_properties("AWS::StepFunctions::StateMachine", {
        "TracingConfiguration": {"Enabled": True},
        "LoggingConfiguration": Match.object_like({"Level": "ALL"}),
    })  # fmt: skip
    asl = definition(t)
    titles = asl["States"]["Titles"]
    assert titles["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert titles["MaxConcurrency"] == config.concurrent_titles <= config.max_concurrent_titles
    assert titles["ItemReader"]["Resource"].endswith(":s3:getObject")
    states = all_states(asl["States"])
    (parallel,) = [s for s in states.values() if s["Type"] == "Parallel"]
    assert len(parallel["Branches"]) == len(job_chains(config.jobs)) == 1  # one job per title: its stages overlap
    jobs = {n: s for n, s in states.items() if s.get("Resource", "").endswith(":batch:submitJob.sync")}
    assert sorted(jobs) == ["title job", "title job on demand"]
    for spec in config.jobs:
        job = jobs[f"{spec.name} job"]
        assert job["Parameters"]["JobQueue.$"] == "$.title.job_queue"
        overrides = job["Parameters"]["ContainerOverrides"]["Environment"]
        assert {"Name": "PRISM_STAGES", "Value.$": f"$.title.jobs.{spec.name}.stages"} in overrides
        assert job["Catch"][-1]["ErrorEquals"] == ["States.ALL"]
        assert job["Retry"][0]["ErrorEquals"][0].startswith("Batch.")
        choice = states[f"Run {spec.name}?"]
        assert choice["Choices"][0]["Variable"] == f"$.title.jobs.{spec.name}.run"
    assert "Summarise" in asl["States"]
    assert states["Finalize title"]["Catch"][0]["Next"] == "Record finalize failure"


def test_a_split_job_layout_runs_its_chains_in_parallel_branches():
    """SPLIT_JOBS (one job per decoded stream): visual -> embeddings in one branch, audio in the other."""
    from aws_cdk import App, Environment
    from aws_cdk.assertions import Template

    from cdk.stack import PrismStack

    config = load("dev", jobs=SPLIT_JOBS, max_vcpus=32, gpu_instance_types=("g6.xlarge", "g6.2xlarge"))
    stack = PrismStack(App(), "Split", config=config, env=Environment(account="123456789012", region=config.region))
    t = Template.from_stack(stack)
    states = all_states(definition(t)["States"])
    (parallel,) = [s for s in states.values() if s["Type"] == "Parallel"]
    assert len(parallel["Branches"]) == 2
    assert states["visual job"]["Next"] == "Run embeddings?"  # embeddings after visual, in its branch
    assert {"Name": "PRISM_LANGUAGE_HINT", "Value.$": "$.title.language_hint"} in (
        states["audio job"]["Parameters"]["ContainerOverrides"]["Environment"]
    )


def test_job_chains_follow_the_job_graph():
    assert [[j.name for j in c] for c in job_chains(load("dev").jobs)] == [["title"]]
    chains = [[j.name for j in c] for c in job_chains(SPLIT_JOBS)]
    assert chains == [["visual", "embeddings"], ["audio"]]
    extra = (JobSpec("a", ("x",)), JobSpec("b", ("y",)), JobSpec("c", ("z",), requires=("a", "b")))
    assert [[j.name for j in c] for c in job_chains(extra)] == [["a", "b", "c"]]


def test_every_registered_stage_is_in_exactly_one_job():
    from prism.stages import registry

    for env in ENVS:
        config = ENVIRONMENTS[env]
        homes = [s for j in config.jobs for s in j.stages]
        assert sorted(homes) == sorted(registry()), env
        graph = config.stage_graph()
        for i, stage in enumerate(graph):  # pipeline order: every stage after those it requires
            assert set(graph[stage]) <= set(list(graph)[:i])


@pytest.mark.parametrize(("jobs", "message"), [
    ((JobSpec("v", ("shots", "keyframes", "cues", "embeddings", "audio")), JobSpec("a", ("audio",))),
     "audio is in jobs v and a"),
    ((JobSpec("v", ("keyframes", "shots", "cues", "embeddings", "audio", "qc", "posters")),), "list shots before keyframes"),
    ((JobSpec("v", ("shots", "keyframes", "cues", "qc", "posters")), JobSpec("e", ("embeddings",)), JobSpec("a", ("audio",))),
     "stage embeddings requires keyframes, so require job v"),
    ((JobSpec("e", ("embeddings",), requires=("v",)), JobSpec("v", ("shots", "keyframes", "cues", "audio", "qc", "posters"))),
     "job e must come after"),
    ((JobSpec("v", ("shots", "keyframes", "cues", "embeddings", "audio", "posters", "thumbnails")),),
     "unknown stage 'thumbnails'"),
])  # fmt: skip
def test_job_layouts_that_break_the_stage_graph_are_refused(jobs, message):
    with pytest.raises(ValueError, match=message):
        check_jobs(jobs, registered_stage_graph())
    with pytest.raises(ValueError, match=message):
        load("dev", jobs=jobs)


def test_a_stage_no_job_group_names_gets_a_default_job():
    graph = registered_stage_graph()
    config = load(
        "dev",
        jobs=(JobSpec("v", ("shots", "keyframes", "cues", "embeddings", "qc", "posters"), vcpus=8, memory_mib=28_000),),
    )
    assert [j.name for j in config.jobs] == ["v", "audio"]
    assert config.jobs[1] == JobSpec("audio", ("audio",))  # JobSpec's defaults: 4 vCPU, 15,000 MiB, 1 GPU, 30 min
    with pytest.raises(ValueError, match=r"\['audio'\] are in no job"):
        check_jobs((JobSpec("v", ("shots", "keyframes", "cues", "embeddings", "qc", "posters")),), graph)  # strict
    # a default job requires the jobs of the stages its stage requires, also when those are default jobs too
    chain = with_default_jobs((JobSpec("v", ("shots", "cues", "audio")),), graph)
    assert [(j.name, j.stages, j.requires) for j in chain] == [
        ("v", ("shots", "cues", "audio"), ()), ("keyframes", ("keyframes",), ("v",)),
        ("embeddings", ("embeddings",), ("keyframes",)), ("posters", ("posters",), ("keyframes", "v")),
        ("qc", ("qc",), ("v", "keyframes")),
    ]  # fmt: skip
    check_jobs(chain, graph)
    with pytest.raises(ValueError, match="a job is already named 'audio'"):
        with_default_jobs((JobSpec("audio", ("shots", "keyframes", "cues", "embeddings")),), graph)


def test_job_specs_validate_their_resources():
    with pytest.raises(ValueError, match="PRISM_HWACCEL needs a GPU"):
        JobSpec("v", ("cues",), gpus=0, environment={"PRISM_HWACCEL": "cuda"})
    with pytest.raises(ValueError, match="40 minute"):
        JobSpec("v", ("cues",), timeout_minutes=90)
    with pytest.raises(ValueError, match="each once"):
        JobSpec("v", ("cues", "cues"))
    big = (JobSpec("visual", ("shots", "keyframes", "cues"), vcpus=16, memory_mib=64_000),
           JobSpec("rest", ("embeddings", "audio"), requires=("visual",)))  # fmt: skip
    with pytest.raises(ValueError, match="job visual fits none of"):
        load("dev", jobs=big, max_vcpus=64)


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
    t.resource_count_is("AWS::CloudWatch::Alarm", 7)
    t.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": Match.object_like(
                {"source": ["aws.batch"], "detail": Match.object_like({"status": ["FAILED"]})}
            )
        },
    )
    t.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    outputs = t.find_outputs("*")
    assert {"StateMachineArn", "CatalogTableName", "ArtifactsBucketName"} <= set(outputs)


@pytest.mark.parametrize("env", ENVS)
def test_lambdas_use_powertools_layer_and_no_docker_bundling(synthesized, env):
    _, t = synthesized[env]
    handlers = t.find_resources("AWS::Lambda::Function", {"Properties": {"Runtime": "python3.13"}})
    assert len(handlers) == 4
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


@pytest.mark.parametrize("env", ENVS)
def test_gateway_endpoints_reach_only_this_accounts_resources_and_ecr_layers(synthesized, env):
    _, t = synthesized[env]
    endpoints = {e["Properties"]["ServiceName"]["Fn::Join"][1][-1]: e["Properties"]
                 for e in t.find_resources("AWS::EC2::VPCEndpoint", {"Properties": {"VpcEndpointType": "Gateway"}}).values()}  # fmt: skip
    s3_policy = endpoints[".s3"]["PolicyDocument"]["Statement"]
    assert [s["Sid"] for s in s3_policy] == ["OwnAccountBuckets", "EcrImageLayers"]
    own, layers = s3_policy
    assert own["Condition"] == {"StringEquals": {"aws:ResourceAccount": ["123456789012"]}} and own["Resource"] == "*"
    assert layers["Action"] == "s3:GetObject"
    assert layers["Resource"] == {
        "Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":s3:::prod-ap-northeast-2-starport-layer-bucket/*"]]
    }
    (tables,) = endpoints[".dynamodb"]["PolicyDocument"]["Statement"]
    assert tables["Condition"] == {"StringEquals": {"aws:ResourceAccount": "123456789012"}}


def test_upstream_bucket_accounts_are_allowed_through_the_s3_endpoint():
    from aws_cdk.assertions import Template

    config = load("dev", account="123456789012", external_bucket_accounts=("999999999999",))
    t = Template.from_stack(stack_of(config))
    t.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Sid": "OwnAccountBuckets",
                                "Condition": {
                                    "StringEquals": {"aws:ResourceAccount": ["123456789012", "999999999999"]}
                                },
                            }
                        )
                    ]
                )
            }
        },
    )


@pytest.mark.parametrize("env", ENVS)
def test_service_principals_in_the_key_policy_act_only_for_this_account(synthesized, env):
    _, t = synthesized[env]
    for key in t.find_resources("AWS::KMS::Key").values():
        for statement in key["Properties"]["KeyPolicy"]["Statement"]:
            service = statement.get("Principal", {}).get("Service")
            if service:
                assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012", statement


def test_embeddings_without_a_configured_model_fails_at_synth():
    """Otherwise every title 'succeeds' with embeddings skipped, after spending a GPU job on it."""
    with pytest.raises(ValueError, match="the embeddings stage is deployed but embeddings_model is not set"):
        load("dev", embeddings_model=None)
    with pytest.raises(ValueError, match="relative to /opt/prism/models"):
        load("dev", embeddings_model="/tmp/siglip")
    visual_only = tuple(j for j in SPLIT_JOBS if j.name == "visual")
    graph = {s: d for s, d in registered_stage_graph().items() if s in visual_only[0].stages}
    with pytest.MonkeyPatch.context() as patch:  # a deployment without embeddings needs no model
        import cdk.config

        patch.setattr(cdk.config, "registered_stage_graph", lambda: graph)
        assert load("dev", embeddings_model=None, jobs=visual_only).embeddings_model is None


@pytest.mark.parametrize("env", ENVS)
def test_the_embeddings_job_names_its_model_and_requires_it(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    for job_definition in t.find_resources("AWS::Batch::JobDefinition").values():
        variables = {e["Name"]: e["Value"] for e in job_definition["Properties"]["ContainerProperties"]["Environment"]}
        (spec,) = [j for j in config.jobs if j.name == variables["PRISM_JOB"]]
        if "embeddings" in spec.stages:
            assert variables["PRISM_EMBEDDINGS_MODEL"] == f"/opt/prism/models/{config.embeddings_model}"
            assert variables["PRISM_REQUIRE_MODELS"] == "true"
            assert variables["PRISM_MODEL_LOCATION"] == config.model_location
        elif "audio" in spec.stages and config.asr_model:
            assert "PRISM_EMBEDDINGS_MODEL" not in variables
        else:
            assert "PRISM_EMBEDDINGS_MODEL" not in variables and "PRISM_REQUIRE_MODELS" not in variables


@pytest.mark.parametrize("env", ENVS)
def test_the_audio_job_names_its_asr_model_and_gets_each_titles_language_hint(synthesized, env):
    """Production transcribes with large-v3-turbo from the model location; dev with the base model in the image.
    The language hint travels per title (discover's item), defaulting to the environment's."""
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    (audio_job,) = [j.name for j in config.jobs if "audio" in j.stages]
    (audio,) = [d for d in t.find_resources("AWS::Batch::JobDefinition").values()
                if {"Name": "PRISM_JOB", "Value": audio_job} in d["Properties"]["ContainerProperties"]["Environment"]]  # fmt: skip
    variables = {e["Name"]: e["Value"] for e in audio["Properties"]["ContainerProperties"]["Environment"]}
    if env == "dev":
        assert config.asr_model is None and "PRISM_ASR_MODEL" not in variables
    else:
        assert config.asr_model == "faster-whisper-large-v3-turbo" and config.language_hint == "ko"
        assert variables["PRISM_ASR_MODEL"] == "/opt/prism/models/faster-whisper-large-v3-turbo"
        assert variables["PRISM_REQUIRE_MODELS"] == "true"  # a missing model fails the job, not every title
    states = all_states(definition(t)["States"])
    for name, state in states.items():
        if state.get("Resource", "").endswith(":batch:submitJob.sync"):
            names = {e["Name"]: e.get("Value.$") for e in state["Parameters"]["ContainerOverrides"]["Environment"]}
            if name.startswith(audio_job):
                assert names["PRISM_LANGUAGE_HINT"] == "$.title.language_hint"
            else:
                assert "PRISM_LANGUAGE_HINT" not in names
    for fn in t.find_resources("AWS::Lambda::Function").values():
        variables = fn["Properties"].get("Environment", {}).get("Variables", {})
        if "PRISM_STAGE_GRAPH" in variables:
            assert variables["PRISM_LANGUAGE_HINT"] == config.language_hint


def test_asr_model_and_language_hint_are_checked():
    with pytest.raises(ValueError, match="asr_model is a directory relative to /opt/prism/models"):
        load("dev", asr_model="/models/whisper")
    with pytest.raises(ValueError, match="language_hint is an ISO 639-1/-2 code"):
        load("dev", language_hint="Korean")


def test_speaker_model_is_checked_and_named_to_the_audio_job():
    """Issue 20.3: the optional pyannote pipeline reaches the audio job as PRISM_SPEAKER_MODEL, nothing else."""
    with pytest.raises(ValueError, match="speaker_model is a directory relative to /opt/prism/models"):
        load("dev", speaker_model="../pyannote")
    config = load("dev", speaker_model="pyannote-speaker-diarization-community-1")
    for job in config.jobs:
        env = config.model_environment(job)
        if "audio" in job.stages:
            assert env["PRISM_SPEAKER_MODEL"] == "/opt/prism/models/pyannote-speaker-diarization-community-1"
            assert env["PRISM_REQUIRE_MODELS"] == "true"
        else:
            assert "PRISM_SPEAKER_MODEL" not in env
    assert all("PRISM_SPEAKER_MODEL" not in load("dev").model_environment(job) for job in config.jobs)


@pytest.mark.parametrize("env", ENVS)
def test_nothing_that_grows_with_the_catalogue_travels_in_the_state(synthesized, env):
    """Back-catalogue runs: item list read from S3, Map results written to S3, a capped run that fits its timeout,
    and the watermark advanced by each completed title (its pending marker deleted)."""
    from cdk.orchestration import PENDING_KEY
    from prism.cloud.catalog import PENDING_KEY as CATALOG_PENDING_KEY

    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    asl = definition(t)
    titles = asl["States"]["Titles"]
    assert titles["ItemReader"]["ReaderConfig"]["InputType"] == "JSON"
    assert titles["ResultWriter"]["Resource"].endswith(":states:::s3:putObject")
    assert titles["ResultWriter"]["Parameters"]["Prefix"] == "_prism/runs/map-results"
    discover = asl["States"]["Discover titles"]["ResultSelector"]
    assert "skipped.$" not in discover and "not_found.$" not in discover and "lists_key.$" in discover
    states = all_states(asl["States"])
    completed = states["Title completed"]
    assert completed["Resource"].endswith(":states:::dynamodb:deleteItem")
    assert completed["Parameters"]["Key"] == {"title_id": {"S": PENDING_KEY}, "record": {"S.$": "$.title_id"}}
    assert PENDING_KEY == CATALOG_PENDING_KEY
    assert states["Finalize title"]["Next"] == "Title completed" and states["Title failed"]["Next"] == "Title completed"
    assert "Save watermark" not in states  # no longer only on a fully successful run
    assert asl["TimeoutSeconds"] == 12 * 3600
    limit = config.titles_per_run
    assert -(-limit // config.concurrent_titles) * config.title_minutes <= 12 * 60
    for fn in t.find_resources("AWS::Lambda::Function", {"Properties": {"Runtime": "python3.13"}}).values():
        assert fn["Properties"]["Environment"]["Variables"]["PRISM_MAX_TITLES_PER_RUN"] == str(limit)


def test_max_titles_per_run_must_finish_within_the_execution_timeout():
    config = load("dev")
    # the title job, possibly after a Spot wait and with one retry: 100 min, 7 rounds in 12 h
    assert config.title_minutes == 30 + 2 * 35
    # 32 vCPUs hold two 16-vCPU title jobs at once (the Map's 5 would leave three waiting in the queue)
    assert config.titles_per_run == 7 * config.concurrent_titles == 14
    with pytest.raises(ValueError, match="max_titles_per_run must be 1..14"):
        load("dev", max_titles_per_run=15)
    split = load("dev", jobs=SPLIT_JOBS, gpu_instance_types=("g6.xlarge", "g6.2xlarge"))
    assert split.title_minutes == (30 + 2 * 35) + (30 + 2 * 5)  # visual then embeddings: 140 min, 5 rounds
    assert load("dev", max_titles_per_run=10).titles_per_run == 10


@pytest.mark.parametrize("env", ENVS)
def test_lambda_throttling_is_retried_and_a_failed_failure_record_does_not_fail_the_run(synthesized, env):
    _, t = synthesized[env]
    states = all_states(definition(t)["States"])
    invokes = {n: s for n, s in states.items() if s.get("Resource", "").endswith(":states:::lambda:invoke")}
    assert len(invokes) >= 4
    for name, state in invokes.items():
        assert ["Lambda.TooManyRequestsException"] in [r["ErrorEquals"] for r in state["Retry"]], name
    records = {n: s for n, s in invokes.items() if n.startswith("Record ")}
    assert sorted(records) == ["Record finalize failure", "Record title failure"]
    for name, state in records.items():
        (catch,) = state["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"] and catch["Next"] == f"{name} failed"
        fallback = states[catch["Next"]]
        assert fallback["ResultPath"] == "$.failure" and "reason.$" in fallback["Parameters"]
        assert fallback["Next"] == state["Next"]  # the title carries on as if it had been recorded


# -- issue 21: concurrency-derived cap, one title never fails the run, failure classes, run-level alarms ------------


def test_the_per_run_cap_follows_the_real_concurrency_and_the_execution_timeout():
    """prod allowed 700 titles a run at 100 "concurrent" titles, but 512 vCPUs of 16-vCPU jobs run 32 at once: at
    35 minutes a title that is 12.8 h, past the 12 h execution timeout."""
    prod = load("prod")
    assert prod.title_vcpus == 16 and prod.concurrent_titles == 512 // 16 == 32
    assert prod.titles_per_run == 7 * 32 == 224  # 7 rounds of 100 min (Spot wait + a retry) in 12 h
    assert -(-prod.titles_per_run // prod.concurrent_titles) * prod.title_minutes <= 12 * 60
    with pytest.raises(ValueError, match=r"max_titles_per_run must be 1..224: 32 at a time \(max_vcpus 512 / 16"):
        load("prod", max_titles_per_run=700)
    split = load("dev", jobs=SPLIT_JOBS, gpu_instance_types=("g6.xlarge", "g6.2xlarge"))
    assert split.title_vcpus == 8 + 4  # visual (then embeddings) beside audio
    assert split.concurrent_titles == min(split.max_concurrent_titles, 32 // 12) == 2


@pytest.mark.parametrize("env", ENVS)
def test_one_title_never_fails_the_run(synthesized, env):
    _, t = synthesized[env]
    states = all_states(definition(t)["States"])
    assert states["Titles"]["ToleratedFailurePercentage"] == 100
    completed = states["Title completed"]
    assert completed["Resource"].endswith(":states:::dynamodb:deleteItem")
    assert any("DynamoDB.ThrottlingException" in r["ErrorEquals"] for r in completed["Retry"])
    (catch,) = completed["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"] and states[catch["Next"]]["Type"] == "Pass"
    for name, state in states.items():  # every task inside a title's flow has a catch
        if state["Type"] == "Task" and name not in ("Discover titles", "Summarise"):
            assert state.get("Catch"), name


@pytest.mark.parametrize("env", ENVS)
def test_failure_classes_gpu_jobs_and_timeouts_from_the_titles_duration(synthesized, env):
    config = ENVIRONMENTS[env]
    _, t = synthesized[env]
    states = all_states(definition(t)["States"])
    for spec in config.jobs:
        for name in (f"{spec.name} job", f"{spec.name} job on demand"):
            timeout = states[name]["Parameters"]["Timeout"]
            assert timeout == {"AttemptDurationSeconds.$": f"$.title.jobs.{spec.name}.timeout_s"}
        if spec.gpus:
            t.has_resource_properties("AWS::Batch::JobDefinition", {"ContainerProperties": Match.object_like({
                "Environment": Match.array_with([{"Name": "PRISM_REQUIRE_GPU", "Value": "true"},
                                                 {"Name": "PRISM_JOB", "Value": spec.name}])})})  # fmt: skip
    env_vars = next(iter(t.find_resources("AWS::Lambda::Function", {"Properties": {"Runtime": "python3.13"}}).values()))
    variables = env_vars["Properties"]["Environment"]["Variables"]
    assert json.loads(variables["PRISM_DELIVERY"])["pattern"] == config.delivery.pattern
    assert variables["PRISM_MAX_ATTEMPTS"] == str(config.max_attempts)
    jobs = json.loads(variables["PRISM_JOBS"])
    assert {name: spec["timeout_minutes"] for name, spec in jobs.items()} == {
        j.name: j.timeout_minutes for j in config.jobs}  # fmt: skip


@pytest.mark.parametrize("env", ENVS)
def test_alarms_for_no_title_succeeded_today_a_growing_backlog_and_parked_titles(synthesized, env):
    _, t = synthesized[env]
    alarms = {a["Properties"]["AlarmDescription"].split(":")[1].strip(): a["Properties"]
              for a in t.find_resources("AWS::CloudWatch::Alarm").values()}  # fmt: skip
    no_success = next(a for d, a in alarms.items() if d.startswith("scheduled runs took titles today"))
    expressions = [m.get("Expression") for m in no_success["Metrics"] if m.get("Expression")]
    assert expressions == ["IF(taken > 0 AND FILL(ok, 0) == 0, 1, 0)"]
    names = {m["MetricStat"]["Metric"]["MetricName"] for m in no_success["Metrics"] if "MetricStat" in m}
    assert names == {"TitlesTaken", "TitlesSucceeded"}
    backlog = next(a for d, a in alarms.items() if d.startswith("the deferred backlog grew"))
    assert backlog["EvaluationPeriods"] == 3 and backlog["ComparisonOperator"] == "GreaterThanThreshold"
    assert [m["Expression"] for m in backlog["Metrics"] if m.get("Expression")] == ["DIFF(deferred)"]
    assert any(a.get("MetricName") == "TitlesParked" for a in alarms.values())
    for alarm in alarms.values():
        assert alarm["AlarmActions"], alarm
