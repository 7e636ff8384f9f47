"""Every AWS call each component makes, with the concrete ARNs and keys it uses, evaluated against the synthesized
policies (identity, bucket, key and VPC endpoint policies together) by an offline IAM simulator
(``tests/cdk/iam_harness.py``): each allowed; calls the design rules out denied."""

from __future__ import annotations

import pytest

from cdk.config import load
from tests.cdk.iam_harness import Call, IamHarness, simulator_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not simulator_available(), reason="run `npm ci --prefix tools/iam` (scripts/setup.sh does)"),
]

ACCOUNT = "123456789012"  # tests/cdk/conftest.py synthesizes every environment into this account
OTHER = "999999999999"
TITLE = "Ep-1"


@pytest.fixture(scope="module", params=["dev", "prod"])
def harness(request, synthesized):
    config = load(request.param)
    _, template = synthesized[request.param]
    return config, IamHarness(template.to_json(), account=ACCOUNT, region=config.region)


def _names(h: IamHarness) -> dict[str, str]:
    return {
        "artifacts": h.arn(h.logical("StorageArtifacts", "AWS::S3::Bucket")),
        "table": h.arn(h.logical("StorageCatalog")),
        "key": h.arn(h.logical("StorageKey", "AWS::KMS::Key")),
        "bus": h.arn(h.logical("EventsBus", "AWS::Events::EventBus")),
    }


def _via(service: str, region: str) -> dict[str, str]:
    return {"kms:ViaService": f"{service}.{region}.amazonaws.com"}


def test_the_worker_can_do_its_job_and_nothing_else(harness):
    config, h = harness
    n, worker = _names(h), h.role("ComputeJobRole")
    source = f"arn:aws:s3:::{config.input_bucket_name}/{config.input_prefix}{TITLE.replace('-', ' ')}.mp4"
    artifact = f"{n['artifacts']}/titles/{TITLE}/shots.parquet"
    model_bucket, _, model_prefix = (config.model_location or "s3://none/").removeprefix("s3://").partition("/")
    s3_kms, ddb_kms = _via("s3", config.region), _via("dynamodb", config.region)
    calls = [
        Call(worker, "s3:GetObject", source, endpoint="s3"),
        Call(worker, "s3:ListBucket", n["artifacts"], context={"s3:prefix": f"titles/{TITLE}/"}, endpoint="s3"),
        *(Call(worker, action, artifact, endpoint="s3") for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")),
        *(Call(worker, action, n["key"], context=s3_kms) for action in ("kms:GenerateDataKey", "kms:Decrypt")),
        *(Call(worker, action, n["table"], endpoint="dynamodb") for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query")),
        Call(worker, "dynamodb:Query", f"{n['table']}/index/record-index", endpoint="dynamodb"),
        Call(worker, "kms:Decrypt", n["key"], context=ddb_kms),
        Call(worker, "s3:GetObject", f"arn:aws:s3:::{model_bucket}/{model_prefix}siglip/model.safetensors", endpoint="s3"),
        Call(worker, "s3:ListBucket", f"arn:aws:s3:::{model_bucket}", context={"s3:prefix": model_prefix}, endpoint="s3"),
        # denied
        Call(worker, "s3:PutObject", source, allowed=False, endpoint="s3", why="the input bucket is read-only"),
        Call(worker, "s3:DeleteObject", source, allowed=False, endpoint="s3", why="the input bucket is read-only"),
        Call(worker, "s3:GetObject", f"arn:aws:s3:::{config.input_bucket_name}/elsewhere/x.mp4", allowed=False,
             endpoint="s3", why="outside the input prefix"),
        Call(worker, "s3:PutObject", f"{n['artifacts']}/_prism/runs/run-1/titles.json", allowed=False, endpoint="s3",
             why="the worker writes titles/ only"),
        Call(worker, "s3:ListBucket", n["artifacts"], allowed=False, endpoint="s3", why="the whole bucket, no prefix"),
        Call(worker, "dynamodb:DeleteItem", n["table"], allowed=False, endpoint="dynamodb"),
        Call(worker, "dynamodb:Scan", n["table"], allowed=False, endpoint="dynamodb"),
        Call(worker, "s3:GetObject", "arn:aws:s3:::someone-elses-bucket/x.mp4", allowed=False, endpoint="s3",
             resource_account=OTHER, why="another account"),
        Call(worker, "kms:Decrypt", f"arn:aws:kms:{config.region}:{OTHER}:key/abc", allowed=False, why="another account"),
    ]  # fmt: skip
    assert h.check(calls) == []


def test_the_vpc_endpoints_reach_only_this_accounts_buckets_and_tables(harness):
    """Even a role whose own policies allowed everything reaches no other account's data through the endpoints."""
    config, h = harness
    n, worker = _names(h), h.role("ComputeJobRole")
    calls = [
        Call(worker, "s3:PutObject", "arn:aws:s3:::exfiltration/x", allowed=False, endpoint="s3",
             resource_account=OTHER, any_identity=True, open_resource=True),
        Call(worker, "s3:GetObject", "arn:aws:s3:::someone-elses-bucket/x", allowed=False, endpoint="s3",
             resource_account=OTHER, any_identity=True, open_resource=True),
        Call(worker, "dynamodb:PutItem", f"arn:aws:dynamodb:{config.region}:{OTHER}:table/t", allowed=False,
             endpoint="dynamodb", any_identity=True, open_resource=True),
        Call(worker, "s3:PutObject", f"{n['artifacts']}/titles/{TITLE}/x", endpoint="s3", any_identity=True),
    ]  # fmt: skip
    assert h.check(calls) == []


def test_the_lambdas_can_do_their_jobs_and_nothing_else(harness):
    config, h = harness
    n = _names(h)
    finalize, discover = h.role("OrchestrationFinalizeRole"), h.role("OrchestrationDiscoverRole")
    record, summarise = h.role("OrchestrationRecordFailureRole"), h.role("OrchestrationSummariseRole")
    manifest = f"{n['artifacts']}/titles/{TITLE}/manifest.json"
    run = f"{n['artifacts']}/_prism/runs/run-1"
    source = f"arn:aws:s3:::{config.input_bucket_name}/{config.input_prefix}{TITLE}.mp4"
    s3_kms = _via("s3", config.region)
    calls = [
        Call(finalize, "s3:ListBucket", n["artifacts"], context={"s3:prefix": f"titles/{TITLE}/"}),
        Call(finalize, "s3:GetObject", manifest),
        Call(finalize, "s3:PutObject", manifest),
        *(Call(finalize, a, n["key"], context=s3_kms) for a in ("kms:GenerateDataKey", "kms:Decrypt")),
        *(Call(finalize, a, n["table"]) for a in ("dynamodb:Query", "dynamodb:GetItem", "dynamodb:PutItem")),
        Call(finalize, "events:PutEvents", n["bus"]),
        Call(discover, "s3:ListBucket", f"arn:aws:s3:::{config.input_bucket_name}",
             context={"s3:prefix": config.input_prefix}),
        Call(discover, "s3:PutObject", f"{run}/titles.json"),
        Call(discover, "s3:PutObject", f"{run}/discovery.json"),
        *(Call(discover, a, n["table"]) for a in ("dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:PutItem",
                                                  "dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:Query")),
        *(Call(record, a, n["table"]) for a in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query")),
        Call(record, "events:PutEvents", n["bus"]),
        Call(summarise, "s3:GetObject", f"{n['artifacts']}/_prism/runs/map-results/abc/manifest.json"),
        Call(summarise, "s3:GetObject", f"{run}/discovery.json"),
        Call(summarise, "s3:PutObject", f"{run}/summary.json"),
        # denied
        Call(finalize, "s3:DeleteObject", f"{n['artifacts']}/titles/{TITLE}/shots.parquet", allowed=False),
        Call(finalize, "s3:PutObject", source, allowed=False),
        Call(finalize, "s3:GetObject", "arn:aws:s3:::someone-elses-bucket/x", allowed=False, resource_account=OTHER),
        Call(discover, "s3:PutObject", manifest, allowed=False, why="discover writes run lists only"),
        Call(discover, "s3:PutObject", source, allowed=False),
        Call(discover, "s3:ListBucket", f"arn:aws:s3:::{config.input_bucket_name}", allowed=False,
             context={"s3:prefix": "elsewhere/"}),
        Call(record, "s3:PutObject", manifest, allowed=False),
        Call(summarise, "s3:PutObject", manifest, allowed=False),
        Call(summarise, "dynamodb:PutItem", n["table"], allowed=False),
    ]  # fmt: skip
    assert h.check(calls) == []


def test_the_state_machine_can_run_every_state_and_submit_any_revision_of_its_job_definitions(harness):
    """A deploy registers a new revision of each job definition; executions in flight still submit the revision
    they started with (and a later deploy's executions the new one): both must be allowed, or every title of the
    run in flight is recorded failed with AccessDenied."""
    config, h = harness
    n, machine = _names(h), h.role("OrchestrationStateMachineRole")
    machine_arn = h.arn(h.logical("OrchestrationStateMachine", "AWS::StepFunctions::StateMachine"))
    queues = [h.arn(k) for k, v in h.resources.items() if v["Type"] == "AWS::Batch::JobQueue"]
    definitions = [h.arn(k) for k, v in h.resources.items() if v["Type"] == "AWS::Batch::JobDefinition"]
    assert len(definitions) == len(config.jobs) and queues
    functions = [h.arn(k) for k, v in h.resources.items()
                 if v["Type"] == "AWS::Lambda::Function" and v["Properties"].get("Handler", "").endswith(".handler")
                 and "Orchestration" in k]  # fmt: skip
    assert len(functions) == 4
    s3_kms = _via("s3", config.region)
    calls = [
        *(Call(machine, "lambda:InvokeFunction", f) for f in functions),
        *(Call(machine, "batch:SubmitJob", q) for q in queues),
        *(Call(machine, "batch:SubmitJob", d) for d in definitions),  # revision 1, this deploy's
        *(Call(machine, "batch:SubmitJob", d.rsplit(":", 1)[0] + ":2") for d in definitions),  # the next deploy's
        *(Call(machine, "batch:SubmitJob", d.rsplit(":", 1)[0]) for d in definitions),  # by name: the latest
        Call(machine, "batch:TerminateJob", f"arn:aws:batch:{config.region}:{ACCOUNT}:job/0000-1111"),
        Call(machine, "states:StartExecution", machine_arn),  # the Distributed Map's children
        Call(machine, "s3:GetObject", f"{n['artifacts']}/_prism/runs/run-1/titles.json"),  # ItemReader
        Call(machine, "s3:PutObject", f"{n['artifacts']}/_prism/runs/map-results/abc/SUCCEEDED_0.json"),  # ResultWriter
        *(Call(machine, a, n["key"], context=s3_kms) for a in ("kms:Decrypt", "kms:GenerateDataKey")),
        Call(machine, "dynamodb:DeleteItem", n["table"]),  # "Title completed": the pending marker
        # denied
        Call(machine, "batch:SubmitJob", f"arn:aws:batch:{config.region}:{ACCOUNT}:job-definition/someone-else:1",
             allowed=False),
        Call(machine, "batch:SubmitJob", f"arn:aws:batch:{config.region}:{OTHER}:job-queue/q", allowed=False),
        Call(machine, "lambda:InvokeFunction", f"arn:aws:lambda:{config.region}:{ACCOUNT}:function:other",
             allowed=False),
        Call(machine, "dynamodb:PutItem", n["table"], allowed=False),
    ]  # fmt: skip
    assert h.check(calls) == []


def test_the_harness_says_which_call_is_wrong(harness):
    """The harness can fail: an expectation the policies do not meet comes back, naming the call."""
    _, h = harness
    worker = h.role("ComputeJobRole")
    wrong = h.check([Call(worker, "s3:PutObject", "arn:aws:s3:::someone-elses-bucket/x", endpoint="s3",
                          resource_account=OTHER)])  # fmt: skip
    assert len(wrong) == 1 and "someone-elses-bucket" in wrong[0] and "expected allowed" in wrong[0]


def test_the_interface_endpoints_serve_only_this_accounts_principals_and_resources(harness):
    """ECR, Logs and ECS endpoints: the image pull, log delivery and ECS agent calls go through; the same calls on
    another account's repository or log group, or by another account's principal, do not (whatever the caller's own
    policies say)."""
    config, h = harness
    execution, instance = h.role("ComputeExecutionRole"), h.role("ComputeInstanceRole")
    logs = h.arn(h.logical("ComputeWorkerLogs", "AWS::Logs::LogGroup")).removesuffix(":*")
    repository = f"arn:aws:ecr:{config.region}:{ACCOUNT}:repository/{config.image_repository}"
    elsewhere = f"arn:aws:ecr:{config.region}:{OTHER}:repository/{config.image_repository}"
    cluster = f"arn:aws:ecs:{config.region}:{ACCOUNT}:cluster/AWSBatch-GpuSpot"
    calls = [
        Call(execution, "ecr:GetAuthorizationToken", "*", endpoint="ecr.api"),
        *(Call(execution, a, repository, endpoint=e) for a in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                                                                "ecr:BatchCheckLayerAvailability") for e in ("ecr.api", "ecr.dkr")),
        Call(execution, "logs:CreateLogStream", f"{logs}:log-stream:title/default/abc", endpoint="logs"),
        Call(execution, "logs:PutLogEvents", f"{logs}:log-stream:title/default/abc", endpoint="logs"),
        *(Call(instance, "ecs:RegisterContainerInstance", cluster, endpoint=e, any_identity=True)
          for e in ("ecs", "ecs-agent", "ecs-telemetry")),
        Call(instance, "ecs:DiscoverPollEndpoint", "*", endpoint="ecs", any_identity=True),
        # denied, whatever the caller's own policies allow
        Call(execution, "ecr:BatchGetImage", elsewhere, allowed=False, endpoint="ecr.dkr", any_identity=True, open_resource=True),
        Call(execution, "ecr:GetDownloadUrlForLayer", elsewhere, allowed=False, endpoint="ecr.api", any_identity=True, open_resource=True),
        Call(execution, "logs:PutLogEvents", f"arn:aws:logs:{config.region}:{OTHER}:log-group:x:log-stream:y",
             allowed=False, endpoint="logs", any_identity=True, open_resource=True),
        Call(instance, "ecs:RegisterContainerInstance", f"arn:aws:ecs:{config.region}:{OTHER}:cluster/c",
             allowed=False, endpoint="ecs-agent", any_identity=True, open_resource=True),
        Call(execution, "ecr:GetAuthorizationToken", "*", allowed=False, endpoint="ecr.api", any_identity=True, open_resource=True,
             context={"aws:PrincipalAccount": OTHER}, why="another account's principal"),
    ]  # fmt: skip
    assert h.check(calls) == []


def test_a_customer_keyed_input_bucket_is_readable_with_its_key(synthesized):
    """With the input bucket's customer key configured, the worker may decrypt with it through S3, and only so."""
    from aws_cdk import App, Environment

    from cdk.stack import PrismStack

    key = f"arn:aws:kms:ap-northeast-2:{OTHER}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    config = load("dev", account=ACCOUNT, input_bucket_encryption="SSE-KMS", input_bucket_kms_key_arn=key)
    stack = PrismStack(App(), "Prism-kms", config=config, env=Environment(account=ACCOUNT, region=config.region))
    from aws_cdk.assertions import Template

    h = IamHarness(Template.from_stack(stack).to_json(), account=ACCOUNT, region=config.region)
    worker, record = h.role("ComputeJobRole"), h.role("OrchestrationRecordFailureRole")
    # The upstream's key policy, as docs/deploy.md asks its owner to write it: this account may use the key.
    upstream = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                                                        "Action": "kms:Decrypt", "Resource": "*"}]}  # fmt: skip
    calls = [
        Call(worker, "kms:Decrypt", key, context=_via("s3", config.region), resource_policy=upstream),
        Call(record, "kms:Decrypt", key, allowed=False, resource_policy=upstream, why="it never reads a video"),
    ]  # fmt: skip
    assert h.check(calls) == []


@pytest.fixture(scope="module")
def prod(synthesized):
    config = load("prod")
    _, template = synthesized["prod"]
    return config, IamHarness(template.to_json(), account=ACCOUNT, region=config.region)


def test_each_consumer_reads_artifacts_and_tables_and_queries_athena_and_nothing_else(prod):
    """The consumer roles (issue 24): read-only on titles/ and tables/, KMS through S3, Glue reads, Athena in
    Prism's workgroup, results under their own prefix; no writes, no run items, no catalog, no input."""
    config, h = prod
    n = _names(h)
    s3_kms = _via("s3", config.region)
    glue = f"arn:aws:glue:{config.region}:{ACCOUNT}"
    workgroup = f"arn:aws:athena:{config.region}:{ACCOUNT}:workgroup/prism-prod"
    assert config.consumers
    for consumer in config.consumers:
        role = h.role(f"ConsumersRole{consumer.name.replace('-', '')}")
        own, other = f"_prism/athena/{consumer.name}/", "_prism/athena/someone-else/"
        calls = [
            Call(role, "s3:GetObject", f"{n['artifacts']}/titles/{TITLE}/shots.parquet"),
            Call(role, "s3:GetObject", f"{n['artifacts']}/tables/shots/{TITLE}.parquet"),
            Call(role, "s3:ListBucket", n["artifacts"], context={"s3:prefix": "tables/cues/"}),
            Call(role, "s3:PutObject", f"{n['artifacts']}/{own}q-1.csv"),
            Call(role, "s3:GetObject", f"{n['artifacts']}/{own}q-1.csv"),
            Call(role, "kms:Decrypt", n["key"], context=s3_kms),
            Call(role, "kms:GenerateDataKey", n["key"], context=s3_kms),
            *(Call(role, a, r) for a, r in (("glue:GetDatabase", f"{glue}:database/prism_prod"),
                                             ("glue:GetTable", f"{glue}:table/prism_prod/shots"),
                                             ("glue:GetTables", f"{glue}:database/prism_prod"))),
            *(Call(role, a, workgroup) for a in ("athena:StartQueryExecution", "athena:GetQueryResults")),
            # denied
            Call(role, "s3:PutObject", f"{n['artifacts']}/titles/{TITLE}/shots.parquet", allowed=False, why="read-only"),
            Call(role, "s3:DeleteObject", f"{n['artifacts']}/tables/shots/{TITLE}.parquet", allowed=False, why="read-only"),
            Call(role, "s3:GetObject", f"{n['artifacts']}/_prism/runs/run-1/titles.json", allowed=False, why="run items"),
            Call(role, "s3:GetObject", f"{n['artifacts']}/{other}q-1.csv", allowed=False, why="another consumer's results"),
            Call(role, "s3:ListBucket", n["artifacts"], allowed=False, why="the whole bucket"),
            Call(role, "kms:Decrypt", n["key"], allowed=False, why="only through S3"),
            Call(role, "dynamodb:GetItem", n["table"], allowed=False, why="the catalog is Prism's"),
            Call(role, "s3:GetObject", f"arn:aws:s3:::{config.input_bucket_name}/{config.input_prefix}x.mp4",
                 allowed=False, why="media never leaves Prism's account"),
            Call(role, "glue:DeleteTable", f"{glue}:table/prism_prod/shots", allowed=False, why="read-only"),
            Call(role, "athena:StartQueryExecution", f"arn:aws:athena:{config.region}:{ACCOUNT}:workgroup/primary",
                 allowed=False, why="only Prism's capped workgroup"),
            Call(role, "events:PutEvents", n["bus"], allowed=False, why="consumers hear events, never send them"),
        ]  # fmt: skip
        assert h.check(calls) == [], consumer.name
