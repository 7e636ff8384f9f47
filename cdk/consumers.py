"""What downstream teams read Prism through, from their own accounts: SQL tables, events, read-only roles.

- ``tables/<artifact>/<title_id>.parquet`` (written by the worker, ``prism.tables``) backs one Glue table per
  Parquet artifact plus ``titles``; columns come from the stages' declared schemas, so a new stage's table
  appears with no edit here. Title ids are free-form, so there is no partition key to project (see
  ``prism.tables``) and no crawler.
- An Athena workgroup whose results are KMS-encrypted and whose queries are capped in bytes scanned.
- The event bus's schemas in an EventBridge schema registry, an archive for replay, and a bus policy that
  lets each consumer account put rules (with targets in its own account) on Prism's bus.
- Per consumer, a role its account may assume: read artifacts and tables, decrypt them, read the Glue
  catalog, run Athena in the workgroup, write query results under its own prefix; nothing else.
"""

from __future__ import annotations

import json

from aws_cdk import Aws, Duration, Stack
from aws_cdk import aws_athena as athena
from aws_cdk import aws_events as events
from aws_cdk import aws_eventschemas as eventschemas
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.config import Consumer
from prism.artifacts import EVENT_SCHEMAS, event_schema
from prism.contract import TABLES_PREFIX, TITLES_PREFIX
from prism.tables import catalogue_tables, hive_type

ATHENA_RESULTS_PREFIX = "_prism/athena/"  # <prefix><consumer>/ per consumer role
PARQUET = {
    "input_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "output_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "serde": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
}


class ConsumerAccess(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        env_name: str,
        artifacts: s3.IBucket,
        key: kms.IKey,
        bus: events.EventBus,
        consumers: tuple[Consumer, ...],
        bytes_scanned_cutoff: int,
        archive_days: int,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.database_name = f"prism_{env_name}".replace("-", "_")
        self.database = glue.CfnDatabase(
            self, "Database", catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name, description="Prism's catalogue-wide tables (tables/ in the artifacts bucket)"
            ),
        )  # fmt: skip
        self.tables: dict[str, glue.CfnTable] = {}
        for name, schema in catalogue_tables().items():
            table = glue.CfnTable(
                self, f"Table-{name}", catalog_id=Aws.ACCOUNT_ID, database_name=self.database_name,
                table_input=glue.CfnTable.TableInputProperty(
                    name=name, table_type="EXTERNAL_TABLE",
                    description=f"{name} of every title: tables/{name}/<title_id>.parquet",
                    parameters={"classification": "parquet", "EXTERNAL": "TRUE"},
                    storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                        location=f"s3://{artifacts.bucket_name}/{TABLES_PREFIX}{name}/",
                        input_format=PARQUET["input_format"], output_format=PARQUET["output_format"],
                        serde_info=glue.CfnTable.SerdeInfoProperty(serialization_library=PARQUET["serde"]),
                        columns=[glue.CfnTable.ColumnProperty(name=f.name, type=hive_type(f.type)) for f in schema],
                    ),
                ),
            )  # fmt: skip
            table.add_dependency(self.database)
            self.tables[name] = table

        self.workgroup_name = f"prism-{env_name}"
        self.workgroup = athena.CfnWorkGroup(
            self, "WorkGroup", name=self.workgroup_name, state="ENABLED",
            description="Consumers' SQL over Prism's tables",
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=bytes_scanned_cutoff,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(selected_engine_version="Athena engine version 3"),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{artifacts.bucket_name}/{ATHENA_RESULTS_PREFIX}",
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=key.key_arn
                    ),
                ),
            ),
        )  # fmt: skip

        self.registry = eventschemas.CfnRegistry(
            self, "SchemaRegistry", registry_name=f"prism-{env_name}", description="The events Prism emits"
        )
        self.schemas = []
        for detail_type in EVENT_SCHEMAS:
            schema = eventschemas.CfnSchema(
                self, f"Schema-{EVENT_SCHEMAS[detail_type]}", registry_name=self.registry.attr_registry_name,
                schema_name=f"prism@{detail_type.replace(' ', '')}", type="JSONSchemaDraft4",
                content=json.dumps(event_schema(detail_type)), description=detail_type,
            )  # fmt: skip
            self.schemas.append(schema)
        self.archive = events.Archive(
            self, "Archive", source_event_bus=bus, archive_name=f"prism-{env_name}-events",
            event_pattern=events.EventPattern(source=["prism"]), retention=Duration.days(archive_days),
            description="Prism's title events, kept for replay",
        )  # fmt: skip

        self.roles: dict[str, iam.Role] = {}
        self.policies: dict[str, iam.Policy] = {}
        for consumer in consumers:
            bus.add_to_resource_policy(
                iam.PolicyStatement(
                    sid=f"ConsumerRules{consumer.name.replace('-', '').title()}",
                    principals=[iam.AccountPrincipal(consumer.account)],
                    actions=[
                        "events:PutRule",
                        "events:PutTargets",
                        "events:DeleteRule",
                        "events:RemoveTargets",
                        "events:DescribeRule",
                        "events:ListTargetsByRule",
                        "events:DisableRule",
                        "events:EnableRule",
                    ],  # fmt: skip
                    resources=[
                        f"arn:{Aws.PARTITION}:events:{stack.region}:{stack.account}:rule/{bus.event_bus_name}/*"
                    ],
                    conditions={"StringEqualsIfExists": {"events:creatorAccount": consumer.account}},
                )
            )
            self.roles[consumer.name], self.policies[consumer.name] = self._role(consumer, env_name, artifacts, key)

    def _role(
        self, consumer: Consumer, env_name: str, artifacts: s3.IBucket, key: kms.IKey
    ) -> tuple[iam.Role, iam.Policy]:
        stack = Stack.of(self)
        results = f"{ATHENA_RESULTS_PREFIX}{consumer.name}/"
        role = iam.Role(
            self, f"Role-{consumer.name}", role_name=f"prism-{env_name}-consumer-{consumer.name}",
            assumed_by=iam.AccountPrincipal(consumer.account),
            description=f"{consumer.name} ({consumer.account}) reads Prism's artifacts and tables; read-only",
            max_session_duration=Duration.hours(4),
        )  # fmt: skip
        readable = [f"{TITLES_PREFIX}*", f"{TABLES_PREFIX}*"]
        glue_arn = f"arn:{Aws.PARTITION}:glue:{stack.region}:{stack.account}"
        statements = [
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[artifacts.arn_for_objects(p) for p in readable]),
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[artifacts.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [*readable, f"{results}*"]}},
            ),  # fmt: skip
            iam.PolicyStatement(  # Athena writes and reads the caller's results with the caller's permissions
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:GetBucketLocation"],
                resources=[artifacts.arn_for_objects(f"{results}*"), artifacts.bucket_arn],
            ),
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
            ),  # fmt: skip
            iam.PolicyStatement(
                actions=["glue:GetDatabase", "glue:GetTable", "glue:GetTables", "glue:GetPartitions"],
                resources=[
                    f"{glue_arn}:catalog",
                    f"{glue_arn}:database/{self.database_name}",
                    f"{glue_arn}:table/{self.database_name}/*",
                ],  # fmt: skip
            ),
            iam.PolicyStatement(
                actions=[
                    "athena:StartQueryExecution",
                    "athena:GetQueryExecution",
                    "athena:GetQueryResults",
                    "athena:StopQueryExecution",
                    "athena:GetWorkGroup",
                    "athena:ListQueryExecutions",
                ],  # fmt: skip
                resources=[
                    f"arn:{Aws.PARTITION}:athena:{stack.region}:{stack.account}:workgroup/{self.workgroup_name}"
                ],
            ),
        ]
        policy = iam.Policy(self, f"Read-{consumer.name}", statements=statements)
        policy.attach_to_role(role)
        return role, policy
