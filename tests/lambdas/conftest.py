"""Run the synthesized stack in moto: its resources, its state machine, its Lambda code, the real worker.

What is real: the state machine definition, table keys, Lambda environment and job definitions
come from the synthesized CloudFormation template (references resolved to moto resources);
moto's Step Functions interpreter executes the ASL; the Lambda handlers in ``lambdas/`` run
in-process for each ``lambda:invoke``; each Batch job runs ``prism.cloud.worker.run_job`` in-process
with the environment Batch would give the container.

What is patched, and why:
- moto's simple Lambda backend returns its input instead of running code: ``invoke`` is
  replaced to call the handler module named by the function's ``Handler``.
- moto's simple Batch backend marks jobs succeeded without running them: finishing a job is
  replaced to run the worker and mark the job succeeded or failed by its exit code.
- moto 5.2's Step Functions port has empty request/response normalisation for the Batch
  integration (ASL ``JobName`` is passed to boto as is, so ``submitJob`` fails with
  ``'JobName'``); the upstream (LocalStack) normalisation through botocore's shapes is restored.
- moto answers GetObject/HeadObject on a missing key with 404 whoever asks; S3 does so only for a caller
  allowed ``s3:ListBucket`` on the bucket without conditions, and answers everyone else 403 AccessDenied. The
  S3 clients of the Lambda handlers and the worker act as their role in the template and get S3's answer
  (``S3AsRole``), so code that tells a missing object by ``NoSuchKey`` fails here as it would in AWS.
- moto 5.2's Distributed Map ``ResultWriter`` writes a manifest that lists no result files (a
  TODO in ``resource_eval_s3``): it is completed to write the children's results as
  ``SUCCEEDED_0.json`` in the documented format (``Status``, ``Input``/``Output`` as JSON strings)
  and list it, which is what ``summarise`` reads in AWS.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from functools import cached_property
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "lambdas"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

ACCOUNT, REGION = "123456789012", "us-east-1"
MOTO_CONFIG = {
    "stepfunctions": {"execute_state_machine": True},
    "batch": {"use_docker": False},
    "lambda": {"use_docker": False},
}


class FakeContext:
    """The few LambdaContext fields Powertools reads."""

    function_name = "prism-test"
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:prism-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"


class Resolver:
    """Evaluates the CloudFormation intrinsics the template uses, against moto's resources."""

    def __init__(self, template: dict):
        self.template = template
        self.refs: dict[str, str] = {
            "AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::URLSuffix": "amazonaws.com",
        }  # fmt: skip
        self.arns: dict[str, str] = {}

    def __call__(self, node):
        if isinstance(node, list):
            return [self(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "Ref" in node:
            return self.refs[node["Ref"]]
        if "Fn::GetAtt" in node:
            logical, attribute = node["Fn::GetAtt"]
            if attribute.endswith("Arn"):
                return self.arns[logical]
            raise KeyError(f"unsupported GetAtt {logical}.{attribute}")
        if "Fn::Join" in node:
            sep, parts = node["Fn::Join"]
            return sep.join(str(self(p)) for p in parts)
        return {k: self(v) for k, v in node.items()}

    def of_type(self, kind: str) -> dict[str, dict]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == kind}


def _restore_batch_normalisation() -> None:
    import botocore.session
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_batch import (
        StateTaskServiceBatch,
    )

    model = botocore.session.get_session().get_service_model("batch")

    def operation(self, action):
        name = action or self.resource.api_action
        return model.operation_model("".join(p[:1].upper() + p[1:] for p in name.split("_")))

    def normalise_parameters(self, parameters, boto_service_name=None, service_action_name=None):
        self._to_boto_request(parameters, operation(self, service_action_name).input_shape)

    def normalise_response(self, response, boto_service_name=None, service_action_name=None):
        self._from_boto_response(response, operation(self, service_action_name).output_shape)

    StateTaskServiceBatch._normalise_parameters = normalise_parameters
    StateTaskServiceBatch._normalise_response = normalise_response


def _complete_result_writer() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval import (
        resource_eval_s3,
    )

    def put_object(env, resource_runtime_part, state_credentials):
        parameters = env.stack.pop()
        results = env.stack.pop()
        s3 = resource_eval_s3.ResourceEvalS3._get_s3_client(resource_runtime_part=resource_runtime_part,
                                                            state_credentials=state_credentials)  # fmt: skip
        map_run_arn = env.map_run_record_pool_manager.get_all().pop().map_run_arn
        prefix = parameters["Prefix"].rstrip("/") + "/" + map_run_arn.split(":")[-1] + "/"
        children = [{"Status": "SUCCEEDED", "Input": "{}", "Output": json.dumps(r)} for r in results]
        s3.put_object(Bucket=parameters["Bucket"], Key=prefix + "SUCCEEDED_0.json", Body=json.dumps(children).encode())
        manifest = {"DestinationBucket": parameters["Bucket"], "MapRunArn": map_run_arn, "ResultFiles": {
            "FAILED": [], "PENDING": [], "SUCCEEDED": [{"Key": prefix + "SUCCEEDED_0.json", "Size": 0}]}}  # fmt: skip
        s3.put_object(Bucket=parameters["Bucket"], Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())
        env.stack.append({"MapRunArn": map_run_arn,
                          "ResultWriterDetails": {"Bucket": parameters["Bucket"], "Key": prefix + "manifest.json"}})  # fmt: skip

    resource_eval_s3.ResourceEvalS3._handle_put_object = staticmethod(put_object)


HANDLER_MODULES = {"discover", "finalize", "record_failure", "summarise"}


class S3AsRole:
    """S3's answer to a GetObject/HeadObject on a missing key, for a caller acting as one of the template's roles.

    S3 says 404 (NoSuchKey) only to a caller whose ``s3:ListBucket`` on the bucket is allowed without conditions;
    a ListBucket conditioned on ``s3:prefix`` does not count (a GetObject carries no prefix), so the caller gets
    403 AccessDenied and cannot tell a missing key from a denied one.
    """

    def __init__(self, deployment: Deployment):
        self.d = deployment
        self.policies: dict[str, list[dict]] = {}  # role logical id -> its statements
        for policy in deployment.resolve.of_type("AWS::IAM::Policy").values():
            for role in policy["Properties"].get("Roles", []):
                self.policies.setdefault(role.get("Ref", ""), []).extend(
                    policy["Properties"]["PolicyDocument"]["Statement"]
                )

    def lists_unconditionally(self, role: str, bucket: str) -> bool:
        from fnmatch import fnmatchcase

        arn = f"arn:aws:s3:::{bucket}"
        for statement in self.policies.get(role, []):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if statement["Effect"] != "Allow" or "Condition" in statement:
                continue
            if not any(fnmatchcase("s3:ListBucket", a) for a in actions):
                continue
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for resource in resources:
                try:
                    resolved = self.d.resolve(resource)
                except KeyError:  # a reference to something the test deployment does not create
                    continue
                if isinstance(resolved, str) and fnmatchcase(arn, resolved):
                    return True
        return False

    def client(self, role: str | None = None):
        """A moto S3 client that answers as S3 does the caller acting as ``role`` (logical id); None: the role of
        the Lambda handler module on the call stack when the call is made."""
        client = boto3.client("s3", region_name=REGION)

        def missing_key(params, model, **_):
            caller = role or self.handler_role()
            try:
                self.d.s3.head_object(Bucket=params["Bucket"], Key=params["Key"])
                return
            except self.d.s3.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] not in ("404", "NoSuchKey"):
                    return  # let moto answer (a missing bucket, ...)
            if self.lists_unconditionally(caller, params["Bucket"]):
                return
            from botocore.exceptions import ClientError

            code = "403" if model.name == "HeadObject" else "AccessDenied"  # HEAD responses have no body
            raise ClientError({"Error": {"Code": code, "Message": "Access Denied"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, model.name)  # fmt: skip

        for operation in ("GetObject", "HeadObject"):
            client.meta.events.register(f"before-parameter-build.s3.{operation}", missing_key)
        return client

    def handler_role(self) -> str:
        frame = sys._getframe()
        while frame is not None:
            module = frame.f_globals.get("__name__")
            if module in HANDLER_MODULES:
                return self.d.function_roles[module]
            frame = frame.f_back
        raise RuntimeError("an S3 call outside the Lambda handlers: use Deployment.s3 or S3AsRole.client(role)")


class Deployment:
    """The synthesized stack, created in moto."""

    def __init__(self, template: dict, work_dir: Path, monkeypatch):
        self.resolve = Resolver(template)
        self.work_dir = work_dir
        self.s3 = boto3.client("s3", region_name=REGION)
        self.ddb = boto3.client("dynamodb", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.batch = boto3.client("batch", region_name=REGION)
        self.worker_runs: list[tuple[str, str, str]] = []  # (title_id, stage, status), per stage of each job
        self.jobs_run: list[tuple[str, str, str]] = []  # (title_id, job, PRISM_STAGES)
        self.queues_used: list[tuple[str, str, str]] = []  # (title_id, job, queue's logical id), every submitted job
        self.spot_short = False  # jobs on the Spot-first queue are cancelled for capacity, as its time limit would
        self._lock = threading.Lock()
        role = boto3.client("iam", region_name=REGION).create_role(
            RoleName="prism-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"]  # fmt: skip
        self._buckets()
        self._table()
        self._bus()
        self._batch(role)
        self.handlers = self._lambdas(role, monkeypatch)
        self.s3_as = S3AsRole(self)
        import _shared

        as_handler = cached_property(lambda aws: self.s3_as.client())
        as_handler.__set_name__(_shared.Aws, "s3")
        monkeypatch.setattr(_shared.Aws, "s3", as_handler)
        (job_role,) = {jd["Properties"]["ContainerProperties"]["JobRoleArn"]["Fn::GetAtt"][0]
                       for jd in self.resolve.of_type("AWS::Batch::JobDefinition").values()}  # fmt: skip
        self.worker_s3 = self.s3_as.client(job_role)
        (machine,) = self.resolve.of_type("AWS::StepFunctions::StateMachine").values()
        self.definition = self.resolve(machine["Properties"]["DefinitionString"])
        self.machine_arn = self.sfn.create_state_machine(
            name="prism-test", definition=self.definition, roleArn=role)["stateMachineArn"]  # fmt: skip

    def _buckets(self) -> None:
        for logical in self.resolve.of_type("AWS::S3::Bucket"):
            name = f"prism-{logical.lower()[:40]}"
            self.s3.create_bucket(Bucket=name)
            self.resolve.refs[logical] = name
            self.resolve.arns[logical] = f"arn:aws:s3:::{name}"
            if logical.startswith("StorageArtifacts"):
                self.artifacts = name

    def _table(self) -> None:
        ((logical, table),) = self.resolve.of_type("AWS::DynamoDB::GlobalTable").items()
        props = table["Properties"]
        self.table = "prism-catalog"
        self.ddb.create_table(
            TableName=self.table, BillingMode="PAY_PER_REQUEST", KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            GlobalSecondaryIndexes=[{k: v for k, v in g.items() if k in ("IndexName", "KeySchema", "Projection")}
                                    for g in props["GlobalSecondaryIndexes"]],
        )  # fmt: skip
        self.resolve.refs[logical] = self.table
        self.resolve.arns[logical] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{self.table}"

    def _bus(self) -> None:
        events = boto3.client("events", region_name=REGION)
        for logical, bus in self.resolve.of_type("AWS::Events::EventBus").items():
            name = bus["Properties"]["Name"]
            arn = events.create_event_bus(Name=name)["EventBusArn"]
            self.resolve.refs[logical], self.resolve.arns[logical] = name, arn
            self.bus = name

    def _batch(self, role: str) -> None:
        self.queue_names: dict[str, str] = {}
        ce = self.batch.create_compute_environment(
            computeEnvironmentName="prism-test", type="UNMANAGED", serviceRole=role)["computeEnvironmentArn"]  # fmt: skip
        for logical in self.resolve.of_type("AWS::Batch::JobQueue"):
            arn = self.batch.create_job_queue(
                jobQueueName=logical[:100], state="ENABLED", priority=1,
                computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])["jobQueueArn"]  # fmt: skip
            self.resolve.refs[logical] = self.resolve.arns[logical] = arn
            self.queue_names[arn] = logical
        for logical, jd in self.resolve.of_type("AWS::Batch::JobDefinition").items():
            container = jd["Properties"]["ContainerProperties"]
            environment = [
                {"name": e["Name"], "value": str(self.resolve(e["Value"]))} for e in container["Environment"]
            ]
            arn = self.batch.register_job_definition(
                jobDefinitionName=logical[:100], type="container",
                containerProperties={"image": "prism-worker:test", "command": container["Command"],
                                     "environment": environment,
                                     "resourceRequirements": [{"type": r["Type"], "value": r["Value"]}
                                                              for r in container["ResourceRequirements"]]},
            )["jobDefinitionArn"]  # fmt: skip
            self.resolve.refs[logical] = arn

    def _lambdas(self, role: str, monkeypatch) -> dict[str, str]:
        import io
        import zipfile

        client = boto3.client("lambda", region_name=REGION)
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as zf:
            zf.writestr("placeholder.py", "")
        handlers, common_env = {}, {}
        self.function_roles: dict[str, str] = {}  # handler module -> its role's logical id
        for logical, fn in self.resolve.of_type("AWS::Lambda::Function").items():
            props = fn["Properties"]
            if not props.get("Runtime", "").startswith("python"):
                continue  # CDK's own providers (dev's bucket auto-delete), not part of a run
            env = {k: str(self.resolve(v)) for k, v in props["Environment"]["Variables"].items()}
            arn = client.create_function(
                FunctionName=logical[:64], Runtime=props["Runtime"], Role=role, Handler=props["Handler"],
                Code={"ZipFile": zipped.getvalue()})["FunctionArn"]  # fmt: skip
            self.resolve.arns[logical] = arn
            handlers[logical[:64]] = props["Handler"]
            self.function_roles[props["Handler"].split(".")[0]] = props["Role"]["Fn::GetAtt"][0]
            env.pop("POWERTOOLS_SERVICE_NAME", None)
            for key, value in env.items():
                assert common_env.setdefault(key, value) == value, f"{key} differs between functions"
        for key, value in common_env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Prism")
        self.lambda_env = common_env
        return handlers

    # -- in-process execution hooks -----------------------------------------------------------
    def invoke(self, backend, function_name, qualifier, body, headers, response_headers):
        name = function_name.rsplit(":", 1)[-1] if function_name.startswith("arn:") else function_name
        module_name, _, attr = self.handlers[name].rpartition(".")
        handler = getattr(importlib.import_module(module_name), attr)
        try:
            result = handler(json.loads(body), FakeContext())
        except Exception as exc:  # what the Lambda runtime reports for an unhandled error
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
        return json.dumps(result).encode()

    def finish_job(self, backend, include_start_attempt, job):
        from prism.cloud.worker import Job, run_job

        backend.backend._jobs[job.job_id] = job
        job.job_started_at = __import__("datetime").datetime.now()
        job.log_stream_name = job._stream_name
        if include_start_attempt:
            job._start_attempt()
        env = {e["name"]: e["value"] for e in job._get_container_property("environment", [])}
        queue = self.queue_names[job.job_queue.arn]
        with self._lock:
            self.queues_used.append((env["PRISM_TITLE_ID"], env["PRISM_JOB"], queue))
        if self.spot_short and queue.startswith("ComputeScheduledQueue"):
            # what the queue's jobStateTimeLimitActions does after spot_wait_minutes at its head
            job.job_stopped_reason = (
                "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested"
            )
            job._mark_stopped(success=False)
            return
        result = run_job(
            Job(stages=tuple(env["PRISM_STAGES"].split(",")), title_id=env["PRISM_TITLE_ID"],
                source_uri=env["PRISM_SOURCE_URI"], artifacts_bucket=env["PRISM_ARTIFACTS_BUCKET"],
                catalog_table=env["PRISM_CATALOG_TABLE"], force=env.get("PRISM_FORCE") == "true",
                pipeline_version=env["PRISM_PIPELINE_VERSION"], name=env["PRISM_JOB"]),
            s3=self.worker_s3, dynamodb=self.ddb, work_dir=self.work_dir,
        )  # fmt: skip
        with self._lock:
            self.worker_runs.extend((env["PRISM_TITLE_ID"], o.stage, o.status) for o in result.stages)
            self.jobs_run.append((env["PRISM_TITLE_ID"], env["PRISM_JOB"], env["PRISM_STAGES"]))
        job.exit_code = result.exit_code  # what the container would exit with (record_failure reads it)
        job._mark_stopped(success=result.exit_code == 0)

    # -- driving it -------------------------------------------------------------------------
    def start(self, run_input: dict, timeout_s: float = 240) -> dict:
        import uuid

        arn = self.sfn.start_execution(
            stateMachineArn=self.machine_arn, name=f"run-{uuid.uuid4().hex[:12]}", input=json.dumps(run_input)
        )["executionArn"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=arn)
            if described["status"] != "RUNNING":
                break
            time.sleep(0.3)
        else:
            raise TimeoutError(f"execution still running after {timeout_s}s")
        assert described["status"] == "SUCCEEDED", described
        return json.loads(described["output"])


VISUAL = ("shots", "keyframes", "cues")


@pytest.fixture(scope="session")
def test_template():
    """The dev stack synthesized with only the ``visual`` job (shots, keyframes, cues: no model weights
    needed), so jobs run real stage code fast. The config's check against the stage registry is
    narrowed to those stages: embeddings and audio need models the tests do not have."""
    from aws_cdk import App, Environment
    from aws_cdk.assertions import Template

    import cdk.config
    from cdk.config import JobSpec, load
    from cdk.stack import PrismStack

    graph = {name: deps for name, deps in cdk.config.registered_stage_graph().items() if name in VISUAL}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cdk.config, "registered_stage_graph", lambda: graph)
        config = load("dev", account=ACCOUNT, region=REGION, availability_zones=("us-east-1a", "us-east-1b"),
                      jobs=(JobSpec("visual", stages=VISUAL, vcpus=2, memory_mib=4000, gpus=0, timeout_minutes=10),))  # fmt: skip
        app = App()
        stack = PrismStack(app, "Prism-test", config=config, env=Environment(account=ACCOUNT, region=REGION))
        return Template.from_stack(stack).to_json()


@pytest.fixture
def deployment(test_template, tmp_path, monkeypatch):
    from moto import mock_aws
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.batch_simple.models import BatchSimpleBackend

    _restore_batch_normalisation()
    _complete_result_writer()
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws(config=MOTO_CONFIG):
        holder: dict[str, Deployment] = {}
        monkeypatch.setattr(LambdaSimpleBackend, "invoke",
                            lambda self, *a, **k: holder["d"].invoke(self, *a, **k))  # fmt: skip
        monkeypatch.setattr(BatchSimpleBackend, "_mark_job_as_finished",
                            lambda self, *a, **k: holder["d"].finish_job(self, *a, **k))  # fmt: skip
        holder["d"] = Deployment(test_template, tmp_path, monkeypatch)
        yield holder["d"]
