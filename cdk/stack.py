"""``PrismStack``: one environment's deployment; wires the constructs and does the grants."""

from __future__ import annotations

import json

from aws_cdk import ArnFormat, CfnOutput, Duration, Stack, Tags
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdk.compute import Compute
from cdk.config import EnvironmentConfig
from cdk.consumers import ConsumerAccess
from cdk.monitoring import Monitoring
from cdk.orchestration import Orchestration
from cdk.schedule import DailySchedule, EventBus
from cdk.smoke import SmokeTestAccess
from cdk.storage import RUNS_PREFIX, TITLES_PREFIX, Storage
from prism.contract import EVENT_BUS, TABLES_PREFIX

RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    731: logs.RetentionDays.TWO_YEARS,
}
LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_13  # the newest runtime the Powertools V3 layer in config targets


class PrismStack(Stack):
    def __init__(self, scope: Construct, id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        super().__init__(scope, id, **kwargs)
        self.config = config
        retention = RETENTION[config.log_retention_days]
        Tags.of(self).add("project", "prism")
        Tags.of(self).add("environment", config.name)
        for key, value in config.tags.items():
            Tags.of(self).add(key, value)

        self.storage = storage = Storage(
            self, "Storage",
            input_bucket_name=config.input_bucket_name, input_prefix=config.input_prefix,
            input_bucket_kms_key_arn=config.input_bucket_kms_key_arn,
            noncurrent_version_days=config.noncurrent_version_days, run_items_days=config.run_items_days,
            retain_data=config.retain_data,
        )  # fmt: skip
        self.events = EventBus(self, "Events", bus_name=EVENT_BUS.format(env=config.name))
        worker_env = {
            "PRISM_ARTIFACTS_BUCKET": storage.artifacts.bucket_name,
            "PRISM_CATALOG_TABLE": storage.catalog.table_name,
            "PRISM_PIPELINE_VERSION": config.pipeline_version,
            "AWS_DEFAULT_REGION": self.region,
            **({"PRISM_MODEL_LOCATION": config.model_location} if config.model_location else {}),
        }
        self.compute = compute = Compute(
            self, "Compute",
            availability_zones=config.availability_zones, vpc_cidr=config.vpc_cidr,
            instance_types=config.gpu_instance_types, max_vcpus=config.max_vcpus, spot=config.spot,
            on_demand_max_vcpus=config.on_demand_vcpus, spot_wait=Duration.minutes(config.spot_wait_minutes),
            root_volume_gib=config.root_volume_gib, image_repository=config.image_repository,
            external_bucket_accounts=config.external_bucket_accounts,
            image_tag=config.image_tag, image_repository_arn=config.image_repository_arn, jobs=config.jobs,
            job_definition_prefix=f"prism-{config.name}", environment=worker_env,
            job_environment={j.name: config.model_environment(j) for j in config.jobs},
            log_retention=retention, log_key=storage.key,
        )  # fmt: skip
        self.orchestration = orchestration = Orchestration(
            self, "Orchestration",
            jobs=config.jobs, stage_graph=config.stage_graph(), job_definitions=compute.job_definitions, job_queues=compute.queues,
            artifacts=storage.artifacts, catalog=storage.catalog,
            environment={
                "PRISM_CATALOG_TABLE": storage.catalog.table_name,
                "PRISM_ARTIFACTS_BUCKET": storage.artifacts.bucket_name,
                "PRISM_INPUT_BUCKET": storage.input_bucket.bucket_name,
                "PRISM_INPUT_PREFIX": config.input_prefix,
                "PRISM_EVENT_BUS": self.events.bus.event_bus_name,
                "PRISM_PIPELINE_VERSION": config.pipeline_version,
                "PRISM_VIDEO_SUFFIXES": ",".join(config.video_suffixes),
                "PRISM_WATERMARK_OVERLAP_S": str(config.watermark_overlap_s),
                "PRISM_MAX_TITLES_PER_RUN": str(config.titles_per_run),
                "PRISM_LANGUAGE_HINT": config.language_hint,
                "PRISM_DELIVERY": json.dumps(config.delivery_json),
                "PRISM_MAX_ATTEMPTS": str(config.max_attempts),
            },
            runtime=LAMBDA_RUNTIME,
            architecture=lambda_.Architecture.X86_64 if config.lambda_architecture == "x86_64" else lambda_.Architecture.ARM_64,
            powertools_layer_arn=config.powertools_layer_arn, max_concurrent_titles=config.concurrent_titles,
            pipeline_version=config.pipeline_version, log_retention=retention, log_key=storage.key,
        )  # fmt: skip
        self.schedule = DailySchedule(
            self, "Schedule", state_machine=orchestration.state_machine, expression=config.schedule_expression,
            time_zone=config.schedule_time_zone, enabled=config.schedule_enabled,
        )  # fmt: skip
        self.monitoring = Monitoring(
            self, "Monitoring", state_machine=orchestration.state_machine,
            job_queue_arns=[q.job_queue_arn for q in compute.queues.values()],
            stage_names=config.stage_names, key=storage.key, emails=config.alarm_emails,
            dashboard_name=f"prism-{config.name}",
        )  # fmt: skip
        self.smoke_test = (
            SmokeTestAccess(self, "SmokeTest", caller_arn=config.smoke_test_caller_arn,
                            role_name=config.smoke_test_role_name, state_machine=orchestration.state_machine)
            if config.smoke_test_caller_arn else None
        )  # fmt: skip
        self.consumers = ConsumerAccess(
            self, "Consumers",
            env_name=config.name, artifacts=storage.artifacts, key=storage.key, bus=self.events.bus,
            consumers=config.consumers, bytes_scanned_cutoff=config.athena_bytes_scanned_cutoff,
            archive_days=config.event_archive_days,
        )  # fmt: skip
        self._grant()
        self._scope_key_policy_services()
        self.outputs = self._outputs()
        self._suppress()

    @property
    def availability_zones(self) -> list[str]:
        """The configured zones: no context lookup, so ``cdk synth`` needs no credentials."""
        return list(self.config.availability_zones)

    def _grant(self) -> None:
        storage, fns = self.storage, self.orchestration.functions
        job_role = self.compute.job_role
        storage.grant_input_read(job_role)
        storage.grant_artifacts(job_role, prefix=TITLES_PREFIX, write=True, delete=True)
        storage.grant_artifacts(job_role, prefix=TABLES_PREFIX, write=True)  # tables/<artifact>/<title_id>.parquet
        storage.grant_catalog(job_role, write=True)
        if self.config.model_location:
            bucket, _, prefix = self.config.model_location.removeprefix("s3://").partition("/")
            job_role.add_to_principal_policy(
                iam.PolicyStatement(
                    actions=["s3:GetObject"], resources=[f"arn:{self.partition}:s3:::{bucket}/{prefix}*"]
                )
            )
            job_role.add_to_principal_policy(iam.PolicyStatement(
                actions=["s3:ListBucket"], resources=[f"arn:{self.partition}:s3:::{bucket}"],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}}))  # fmt: skip

        storage.grant_input_read(fns["Discover"], list_objects=True)
        storage.grant_artifacts(fns["Discover"], prefix=RUNS_PREFIX, write=True)
        storage.grant_catalog(fns["Discover"], write=True)  # the watermark
        # Title lookups 100 at a time, and the pending markers of the titles a run takes on.
        fns["Discover"].add_to_role_policy(iam.PolicyStatement(
            actions=["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:PutItem", "dynamodb:DeleteItem"],
            resources=[storage.catalog.table_arn]))  # fmt: skip
        storage.grant_artifacts(fns["Summarise"], prefix=RUNS_PREFIX, write=True)  # Map results in, summary out
        storage.grant_artifacts(fns["Finalize"], prefix=TITLES_PREFIX, write=True)
        storage.grant_catalog(fns["Finalize"], write=True)
        storage.grant_catalog(fns["RecordFailure"], write=True)
        for name in ("Finalize", "RecordFailure"):
            self.events.bus.grant_put_events_to(fns[name])
        # The run's title list is read by the Distributed Map, and its watermark written, by the state machine.
        storage.grant_key(self.orchestration.state_machine, write=True)
        # CloudWatch Logs encrypts this account's log groups (workers, Lambdas, executions, flow logs) with the key.
        storage.key.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": self.account},
                        "ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                    self.format_arn(service="logs", resource="log-group", resource_name="*",
                                                    arn_format=ArnFormat.COLON_RESOURCE_NAME)}}))  # fmt: skip
        # Services that publish to the KMS-encrypted alarm topic.
        # aws:SourceAccount: only on behalf of this account's rules and alarms (no confused deputy).
        for service in ("events.amazonaws.com", "cloudwatch.amazonaws.com"):
            storage.key.add_to_resource_policy(iam.PolicyStatement(
                principals=[iam.ServicePrincipal(service)], actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=["*"], conditions={"StringEquals": {"aws:SourceAccount": self.account}}))  # fmt: skip

    def _scope_key_policy_services(self) -> None:
        """``aws:SourceAccount`` on every service principal in the key policy, including the statement
        CDK adds for EventBridge when a rule targets the encrypted alarm topic (no confused deputy)."""
        key = self.storage.key.node.default_child
        statements = self.resolve(key.key_policy)["Statement"]
        for i, statement in enumerate(statements):
            if "Service" in statement.get("Principal", {}) and "Condition" not in statement:
                key.add_property_override(f"KeyPolicy.Statement.{i}.Condition",
                                          {"StringEquals": {"aws:SourceAccount": self.account}})  # fmt: skip

    def _outputs(self) -> dict[str, CfnOutput]:
        """What the operator CLI (``prism reprocess|status --env``) and the pipeline's smoke test read."""
        values = {
            "StateMachineArn": self.orchestration.state_machine.state_machine_arn,
            "CatalogTableName": self.storage.catalog.table_name,
            "ArtifactsBucketName": self.storage.artifacts.bucket_name,
            "EventBusName": self.events.bus.event_bus_name,
            "AlarmTopicArn": self.monitoring.topic.topic_arn,
            "ImageTag": self.config.image_tag,
            "GlueDatabaseName": self.consumers.database_name,
            "AthenaWorkGroup": self.consumers.workgroup_name,
        }
        values.update(
            {f"ConsumerRoleArn{n.replace('-', '').title()}": r.role_arn for n, r in self.consumers.roles.items()}
        )
        if self.smoke_test:
            values["SmokeTestRoleArn"] = self.smoke_test.role.role_arn
        return {name: CfnOutput(self, name, value=value) for name, value in values.items()}

    def _suppress(self) -> None:
        """Every suppression names its rule and why; each is scoped to the findings it covers."""
        iam5 = "AwsSolutions-IAM5"
        NagSuppressions.add_resource_suppressions(
            [self.compute.job_role, *(f.role for f in self.orchestration.functions.values())],
            [{"id": iam5, "reason": "Object ARNs under one prefix (titles/*, tables/*, _prism/runs/*, the input prefix) are "
              "the narrowest S3 resource for per-title keys; X-Ray PutTraceSegments has no resource-level "
              "permissions; log-group ARNs end in :* for their streams.",
              "applies_to": [{"regex": "/^Resource::(.*(titles|tables|_prism\\/runs|\\/\\*)|.*:\\*|\\*)$/g"}]}],
            apply_to_children=True,
        )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            self.orchestration.state_machine,
            [{"id": iam5, "reason": "Step Functions needs batch:DescribeJobs (no resource-level permissions) and "
              "TerminateJob on job/* for .sync jobs, lambda:InvokeFunction on function versions (fn:*), the "
              "Distributed Map's child executions (execution:<machine>:*), s3:GetObject on the run item list, and "
              "X-Ray/log delivery actions that take no resource ARN.",
              "applies_to": [{"regex": "/^Resource::.*$/g"}]}],
            apply_to_children=True,
        )  # fmt: skip
        if self.consumers.roles:
            NagSuppressions.add_resource_suppressions(
                [*self.consumers.roles.values(), *self.consumers.policies.values()],
                [{"id": iam5, "reason": "A consumer reads every title: object ARNs under titles/*, tables/* and its own "
                  "Athena results prefix, and the Glue tables of Prism's database (table/<db>/*), are the narrowest "
                  "resources for keys and tables that grow with the catalogue.",
                  "applies_to": [{"regex": "/^Resource::.*(titles|tables|athena\\/[a-z0-9-]+|prism_[a-z0-9_]+)\\/\\*.*$/g"}]}],
                apply_to_children=True,
            )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            self.compute.execution_role,
            [{"id": iam5, "reason": "ECR GetAuthorizationToken has no resource-level permissions.",
              "applies_to": ["Resource::*"]}],
            apply_to_children=True,
        )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            list(self.orchestration.functions.values()),
            [{"id": "AwsSolutions-L1", "reason": "Pinned to python3.13, the newest runtime the configured "
              "Powertools V3 layer is published for; bump both together in cdk/config.py."}],
        )  # fmt: skip
