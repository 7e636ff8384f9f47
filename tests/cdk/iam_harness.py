"""Evaluate a synthesized stack's IAM as AWS would, offline: identity, bucket, key and VPC endpoint policies together.

``IamHarness(template, account=..., region=...)`` gives every resource of the template a concrete name and ARN
(a role ``X`` is ``arn:aws:iam::<account>:role/X``, a bucket ``x`` is ``arn:aws:s3:::x``, ...), resolves the
template's intrinsics with them, and evaluates :class:`Call`\\ s with ``@cloud-copilot/iam-simulate`` (npm, pinned
in ``tools/iam/``, installed by ``scripts/setup.sh``): per call, the identity policies of the caller's role, the
resource policy of the bucket or key it touches (when this stack owns it) and, for a call made from the VPC, the
policy of the endpoint it goes through. The evaluation is the simulator's, not ours; this module only gathers
policies and request context.

Use it for any role of a stack: ``harness.check(calls)`` returns the calls whose result differs from the one
expected, each with the simulator's per-policy verdicts::

    harness = IamHarness(template, account="123456789012", region="ap-northeast-2")
    worker = harness.role("ComputeJobRole")
    assert harness.check([Call(worker, "s3:PutObject", harness.s3_object("StorageArtifacts", "titles/t/x"))]) == []
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SIMULATOR = ROOT / "tools" / "iam"
ALLOWED = "Allowed"


class SimulatorMissing(RuntimeError):
    """tools/iam has no node_modules: run ``npm ci --prefix tools/iam`` (scripts/setup.sh does)."""


def simulator_available() -> bool:
    return (
        shutil.which("node") is not None and (SIMULATOR / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir()
    )


@dataclass(frozen=True)
class Call:
    """One AWS request: who (a role's logical id), what, on which concrete ARN, and whether it should be allowed.

    ``endpoint``: the VPC endpoint service the request goes through (``s3``, ``dynamodb``, ``ecr.api``,
    ``ecr.dkr``, ``logs``, ``ecs``...), None for a caller outside the VPC (Lambda, Step Functions).
    ``resource_account``: the account owning the resource (default: the ARN's account, else this stack's).
    ``any_identity``: evaluate as if the caller's own policies allowed everything, to test what the resource and
    endpoint policies alone let through (a role added later, a policy widened by mistake).
    ``open_resource``: the resource's own policy allows anyone (an outsider's bucket or repository set up to receive
    or serve data): then only this stack's policies stand between the caller and it. ``resource_policy``: the policy
    of a resource another party owns (an upstream bucket's key policy), where the template has none.
    """

    principal: str
    action: str
    resource: str
    allowed: bool = True
    context: dict[str, str | list[str]] = field(default_factory=dict)
    endpoint: str | None = None
    resource_account: str | None = None
    any_identity: bool = False
    open_resource: bool = False
    resource_policy: dict | None = None
    why: str = ""

    def __str__(self) -> str:
        via = f" via the {self.endpoint} endpoint" if self.endpoint else ""
        return f"{self.principal} {self.action} {self.resource}{via} {self.context or ''}".rstrip()


class IamHarness:
    def __init__(self, template: dict, *, account: str, region: str, partition: str = "aws"):
        self.template, self.account, self.region, self.partition = template, account, region, partition
        self.resources: dict[str, dict] = template["Resources"]

    # -- names and ARNs ---------------------------------------------------------------------------
    def _type(self, logical: str) -> str:
        return self.resources[logical]["Type"]

    def name(self, logical: str) -> str:
        """The physical name: the one the template sets, else derived from the logical id."""
        props = self.resources[logical].get("Properties", {})
        for key in ("BucketName", "TableName", "RoleName", "FunctionName", "LogGroupName", "Name",
                    "JobQueueName", "JobDefinitionName", "StateMachineName", "TopicName"):  # fmt: skip
            if isinstance(props.get(key), str):
                return props[key]
        return logical.lower() if self._type(logical) == "AWS::S3::Bucket" else logical

    def arn(self, logical: str) -> str:
        kind, name = self._type(logical), self.name(logical)
        p, r, a = self.partition, self.region, self.account
        arns = {
            "AWS::S3::Bucket": f"arn:{p}:s3:::{name}",
            "AWS::DynamoDB::GlobalTable": f"arn:{p}:dynamodb:{r}:{a}:table/{name}",
            "AWS::DynamoDB::Table": f"arn:{p}:dynamodb:{r}:{a}:table/{name}",
            "AWS::IAM::Role": f"arn:{p}:iam::{a}:role/{name}",
            "AWS::KMS::Key": f"arn:{p}:kms:{r}:{a}:key/{name}",
            "AWS::Lambda::Function": f"arn:{p}:lambda:{r}:{a}:function:{name}",
            "AWS::Logs::LogGroup": f"arn:{p}:logs:{r}:{a}:log-group:{name}:*",
            "AWS::Events::EventBus": f"arn:{p}:events:{r}:{a}:event-bus/{name}",
            "AWS::StepFunctions::StateMachine": f"arn:{p}:states:{r}:{a}:stateMachine:{name}",
            "AWS::Batch::JobQueue": f"arn:{p}:batch:{r}:{a}:job-queue/{name}",
            "AWS::Batch::JobDefinition": f"arn:{p}:batch:{r}:{a}:job-definition/{name}:1",
            "AWS::SNS::Topic": f"arn:{p}:sns:{r}:{a}:{name}",
        }
        if kind not in arns:
            raise KeyError(f"{logical}: no ARN format for {kind}")
        return arns[kind]

    def ref(self, logical: str) -> str:
        if logical.startswith("AWS::"):
            return {"AWS::Partition": self.partition, "AWS::Region": self.region, "AWS::AccountId": self.account,
                    "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "Prism-test"}[logical]  # fmt: skip
        if logical in self.template.get("Parameters", {}):
            return str(self.template["Parameters"][logical].get("Default", logical))
        kind = self._type(logical)
        if kind in ("AWS::Batch::JobQueue", "AWS::Batch::JobDefinition", "AWS::StepFunctions::StateMachine",
                    "AWS::SNS::Topic"):  # fmt: skip
            return self.arn(logical)
        if kind == "AWS::EC2::VPCEndpoint":
            return f"vpce-{logical.lower()[:17]}"
        return self.name(logical)

    def resolve(self, node: Any) -> Any:
        """The template fragment with every intrinsic evaluated against the concrete names."""
        if isinstance(node, list):
            return [self.resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "Ref" in node:
            return self.ref(node["Ref"])
        if "Fn::GetAtt" in node:
            logical, attribute = node["Fn::GetAtt"]
            if attribute.endswith("Arn"):
                return self.arn(logical)
            if attribute.endswith("Name"):
                return self.name(logical)
            raise KeyError(f"unsupported GetAtt {logical}.{attribute}")
        if "Fn::Join" in node:
            sep, parts = node["Fn::Join"]
            return sep.join(str(self.resolve(p)) for p in parts)
        if "Fn::Select" in node:
            index, items = node["Fn::Select"]
            return self.resolve(items)[int(index)]
        if "Fn::Split" in node:
            sep, value = node["Fn::Split"]
            return str(self.resolve(value)).split(sep)
        if "Fn::Sub" in node:
            text = node["Fn::Sub"] if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"][0]
            return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub(m.group(1)), text)
        return {k: self.resolve(v) for k, v in node.items()}

    def _sub(self, name: str) -> str:
        logical, _, attribute = name.partition(".")
        return self.resolve({"Fn::GetAtt": [logical, attribute]}) if attribute else self.ref(logical)

    def logical(self, prefix: str, kind: str | None = None) -> str:
        """The one resource whose logical id starts with ``prefix`` (CDK appends a hash)."""
        found = [k for k, v in self.resources.items()
                 if k.startswith(prefix) and (kind is None or v["Type"] == kind)]  # fmt: skip
        if len(found) != 1:
            raise KeyError(f"{prefix!r} ({kind or 'any type'}) matches {found}")
        return found[0]

    def role(self, prefix: str) -> str:
        return self.logical(prefix, "AWS::IAM::Role")

    def s3_object(self, bucket_prefix: str, key: str) -> str:
        return f"{self.arn(self.logical(bucket_prefix, 'AWS::S3::Bucket'))}/{key}"

    # -- policies ---------------------------------------------------------------------------------
    def identity_policies(self, role: str) -> list[dict]:
        policies = []
        for i, inline in enumerate(self.resources[role].get("Properties", {}).get("Policies", [])):
            policies.append({"name": f"{role}-inline-{i}", "policy": self.resolve(inline["PolicyDocument"])})
        for logical, resource in self.resources.items():
            if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                if {"Ref": role} in resource["Properties"].get("Roles", []):
                    policies.append({"name": logical, "policy": self.resolve(resource["Properties"]["PolicyDocument"])})
        return policies

    def resource_policy(self, arn: str) -> dict | None:
        """The policy of the bucket or key ``arn`` names, when this stack owns it."""
        for logical, resource in self.resources.items():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::S3::BucketPolicy":
                bucket = f"arn:{self.partition}:s3:::{self.resolve(props['Bucket'])}"
                if arn == bucket or arn.startswith(bucket + "/"):
                    return self.resolve(props["PolicyDocument"])
            if resource["Type"] == "AWS::KMS::Key" and arn == self.arn(logical):
                return self.resolve(props["KeyPolicy"])
        return None

    def endpoint_policies(self, service: str) -> list[dict]:
        """The policies of the VPC endpoints for ``service``; an endpoint without one allows everything."""
        found = []
        for logical, resource in self.resources.items():
            if resource["Type"] != "AWS::EC2::VPCEndpoint":
                continue
            name = str(self.resolve(resource["Properties"]["ServiceName"]))
            if name.removeprefix(f"com.amazonaws.{self.region}.") != service:
                continue
            document = resource["Properties"].get("PolicyDocument")
            found.append(
                {"name": logical, "policy": _endpoint_principals(self.resolve(document)) if document else None}
            )
        if not found:
            raise KeyError(f"no VPC endpoint for {service}: a worker could not reach it at all")
        return found

    # -- evaluation -------------------------------------------------------------------------------
    def _simulation(self, call: Call) -> dict:
        principal = self.arn(call.principal)
        account = call.resource_account or _arn_account(call.resource) or self.account
        context: dict[str, str | list[str]] = {
            "aws:PrincipalArn": principal, "aws:PrincipalAccount": self.account, "aws:ResourceAccount": account,
            "aws:SecureTransport": "true", "aws:PrincipalType": "AssumedRole",
        }  # fmt: skip
        identity = (
            [{"name": "any", "policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}}]
            if call.any_identity
            else self.identity_policies(call.principal)
        )  # fmt: skip
        simulation: dict[str, Any] = {
            "request": {"principal": principal, "action": call.action,
                        "resource": {"resource": call.resource, "accountId": account}, "contextVariables": {}},
            "identityPolicies": identity, "serviceControlPolicies": [], "resourceControlPolicies": [],
        }  # fmt: skip
        if call.open_resource:
            simulation["resourcePolicy"] = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}]}  # fmt: skip
        elif call.resource_policy is not None:
            simulation["resourcePolicy"] = call.resource_policy
        elif (policy := self.resource_policy(call.resource)) is not None:
            simulation["resourcePolicy"] = policy
        if call.endpoint:
            endpoints = [e for e in self.endpoint_policies(call.endpoint) if e["policy"] is not None]
            if endpoints:
                simulation["vpcEndpointPolicies"] = endpoints
            context["aws:SourceVpce"] = self.ref(self.endpoint_policies(call.endpoint)[0]["name"])
        simulation["request"]["contextVariables"] = {**context, **call.context}
        return simulation

    def evaluate(self, calls: list[Call]) -> list[dict]:
        """The simulator's answer per call: ``result`` (Allowed / ImplicitlyDenied / ExplicitlyDenied / Error)
        and ``policies`` (each policy type's own verdict)."""
        if not simulator_available():
            raise SimulatorMissing(f"no node or no {SIMULATOR}/node_modules: run `npm ci --prefix tools/iam`")
        done = subprocess.run(["node", str(SIMULATOR / "simulate.mjs")], input=json.dumps([self._simulation(c) for c in calls]),
                              capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
        return json.loads(done.stdout)

    def check(self, calls: list[Call]) -> list[str]:
        """One line per call whose result is not the expected one (an empty list: all as expected)."""
        wrong = []
        for call, answer in zip(calls, self.evaluate(calls), strict=True):
            if answer["result"] == "Error":
                wrong.append(f"{call}: the simulator refused the request: {json.dumps(answer['errors'])[:500]}")
            elif (answer["result"] == ALLOWED) != call.allowed:
                wrong.append(f"{call}: {answer['result']} ({answer['policies']}), expected "
                             f"{'allowed' if call.allowed else 'denied'}{': ' + call.why if call.why else ''}")  # fmt: skip
        return wrong


def _arn_account(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4] else None


def _endpoint_principals(document: dict) -> dict:
    """``{"AWS": "*"}`` (how CDK writes AnyPrincipal) as ``"*"``: the same principal, the form the simulator's
    endpoint-policy validation accepts."""
    statements = []
    for statement in document.get("Statement", []):
        if statement.get("Principal") == {"AWS": "*"}:
            statement = {**statement, "Principal": "*"}
        statements.append(statement)
    return {**document, "Statement": statements}
