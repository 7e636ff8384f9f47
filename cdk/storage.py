"""Storage: the artifacts bucket (``titles/<title_id>/...``), the catalog table, the input bucket."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from cdk_nag import NagSuppressions
from constructs import Construct

from prism.contract import RUNS_PREFIX, TITLES_PREFIX

__all__ = ["RUNS_PREFIX", "TITLES_PREFIX", "Storage"]


class Storage(Construct):
    """KMS key, artifacts bucket (+ its access-log bucket), DynamoDB catalog, imported input bucket."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        input_bucket_name: str,
        input_prefix: str,
        input_bucket_kms_key_arn: str | None,
        noncurrent_version_days: int,
        run_items_days: int,
        retain_data: bool,
    ) -> None:
        super().__init__(scope, id)
        removal = RemovalPolicy.RETAIN if retain_data else RemovalPolicy.DESTROY
        self.key = kms.Key(self, "Key", description="Prism artifacts, catalog, topics", enable_key_rotation=True,
                           removal_policy=removal)  # fmt: skip
        self.access_logs = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # S3 server access logging cannot target SSE-KMS buckets
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
            removal_policy=removal,
            auto_delete_objects=not retain_data,
        )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            self.access_logs,
            [{"id": "AwsSolutions-S1", "reason": "This is the access-log bucket; logging it to itself would loop."}],
        )
        self.artifacts = s3.Bucket(
            self, "Artifacts",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="artifacts/",
            lifecycle_rules=[
                s3.LifecycleRule(id="old-versions", noncurrent_version_expiration=Duration.days(noncurrent_version_days),
                                 abort_incomplete_multipart_upload_after=Duration.days(7)),
                s3.LifecycleRule(id="run-items", prefix=RUNS_PREFIX, expiration=Duration.days(run_items_days)),
                s3.LifecycleRule(id="intelligent-tiering", prefix=TITLES_PREFIX, transitions=[
                    s3.Transition(storage_class=s3.StorageClass.INTELLIGENT_TIERING, transition_after=Duration.days(30))
                ]),
            ],
            removal_policy=removal,
            # A bucket with objects cannot be deleted: without this, destroying a dev stack fails and
            # leaves the bucket behind (retained environments keep their data anyway).
            auto_delete_objects=not retain_data,
        )  # fmt: skip
        self.catalog = dynamodb.TableV2(
            self, "Catalog",
            partition_key=dynamodb.Attribute(name="title_id", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="record", type=dynamodb.AttributeType.STRING),
            billing=dynamodb.Billing.on_demand(),
            encryption=dynamodb.TableEncryptionV2.customer_managed_key(self.key),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            global_secondary_indexes=[
                dynamodb.GlobalSecondaryIndexPropsV2(
                    index_name="record-index",
                    partition_key=dynamodb.Attribute(name="record", type=dynamodb.AttributeType.STRING),
                    sort_key=dynamodb.Attribute(name="title_id", type=dynamodb.AttributeType.STRING),
                )
            ],
            deletion_protection=retain_data,
            removal_policy=removal,
        )  # fmt: skip
        self.input_bucket = s3.Bucket.from_bucket_name(self, "Input", input_bucket_name)
        self.input_prefix = input_prefix
        self.input_key = (
            kms.Key.from_key_arn(self, "InputKey", input_bucket_kms_key_arn) if input_bucket_kms_key_arn else None
        )

    # -- least-privilege grants, exact actions (no wildcards in actions) --------------------
    def grant_input_read(self, grantee: iam.IGrantable, *, list_objects: bool = False) -> None:
        statements = [
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[self.input_bucket.arn_for_objects(f"{self.input_prefix}*")]
            )
        ]
        if list_objects:
            statements.append(iam.PolicyStatement(
                actions=["s3:ListBucket"], resources=[self.input_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self.input_prefix}*"]}},
            ))  # fmt: skip
        if self.input_key is not None:
            statements.append(iam.PolicyStatement(actions=["kms:Decrypt"], resources=[self.input_key.key_arn]))
        for statement in statements:
            grantee.grant_principal.add_to_principal_policy(statement)

    def grant_artifacts(self, grantee: iam.IGrantable, *, prefix: str, write: bool, delete: bool = False) -> None:
        actions = ["s3:GetObject"] + (["s3:PutObject"] if write else []) + (["s3:DeleteObject"] if delete else [])
        principal = grantee.grant_principal
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=actions, resources=[self.artifacts.arn_for_objects(f"{prefix}*")])
        )
        principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[self.artifacts.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        ))  # fmt: skip
        self.grant_key(grantee, write=write)

    def grant_catalog(self, grantee: iam.IGrantable, *, write: bool) -> None:
        actions = ["dynamodb:GetItem", "dynamodb:Query"] + (["dynamodb:PutItem"] if write else [])
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=actions, resources=[self.catalog.table_arn, f"{self.catalog.table_arn}/index/record-index"]
            )
        )
        self.grant_key(grantee, write=write)

    def grant_key(self, grantee: iam.IGrantable, *, write: bool) -> None:
        actions = ["kms:Decrypt", "kms:DescribeKey"] + (["kms:GenerateDataKey", "kms:Encrypt"] if write else [])
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=actions, resources=[self.key.key_arn])
        )
