"""``PrismPipelineStack``: the tooling account's CDK Pipelines pipeline that tests, builds and promotes Prism.

Source (repository connection) → Build (``bash .ci/run``, then ``cdk synth`` of ``cdk.pipeline_app``)
→ UpdatePipeline (self-mutation) → Assets (the Lambda bundle) → Image (the worker image, tagged with
the commit id, pushed to this account's ECR repository) → dev (+ smoke test) → approval → staging
→ approval → prod. Every environment pulls the image that its templates name, so an environment
deploys exactly the image built from the commit it was synthesized from.
"""

from __future__ import annotations

import shlex

from aws_cdk import Duration, RemovalPolicy, Stack, Tags, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codestarnotifications as notifications
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from cdk_nag import NagSuppressions
from constructs import Construct

from cdk.config import PipelineConfig, PromotionStage
from cdk.stage import PrismStage

CI_COMMAND = "bash .ci/run"  # the repository's CI entry point: setup from scratch, lint, type check, the test suite
PIPELINE_APP = "python -m cdk.pipeline_app"
IMAGE_PULL_ACTIONS = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
IMAGE_PUSH_ACTIONS = ["ecr:DescribeImages", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                      "ecr:CompleteLayerUpload", "ecr:PutImage"]  # fmt: skip
APPROVAL_EVENTS = [
    "codepipeline-pipeline-manual-approval-needed",
    "codepipeline-pipeline-pipeline-execution-failed",
    "codepipeline-pipeline-pipeline-execution-succeeded",
]


class PrismPipelineStack(Stack):
    def __init__(self, scope: Construct, id: str, *, config: PipelineConfig, image_tag: str, version: str,
                 nag: bool = True, **kwargs) -> None:  # fmt: skip
        super().__init__(scope, id, **kwargs)
        self.config = config
        Tags.of(self).add("project", "prism")
        Tags.of(self).add("environment", "tooling")
        for key, value in config.tags.items():
            Tags.of(self).add(key, value)

        self.source = source = pipelines.CodePipelineSource.connection(
            config.repository, config.branch, connection_arn=config.connection_arn, trigger_on_push=True
        )
        commit = source.source_attribute("CommitId")
        self.images = self._image_repository([s.account for s in self._environments(image_tag, version)])

        self.synth = pipelines.CodeBuildStep(
            "Synth",
            input=source,
            env={"IMAGE_TAG": commit},
            build_environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.from_docker_registry(config.synth_image),
                compute_type=codebuild.ComputeType.LARGE),
            # scripts/setup.sh installs the system packages it needs; it only expects python3 with venv.
            install_commands=["apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null"],
            commands=[CI_COMMAND, synth_command(config.cdk_cli)],
            primary_output_directory="cdk.out",
            timeout=Duration.minutes(90),
        )  # fmt: skip
        self.pipeline = pipelines.CodePipeline(
            self, "Pipeline",
            pipeline_name=config.pipeline_name,
            pipeline_type=codepipeline.PipelineType.V2,
            synth=self.synth,
            self_mutation=True,
            cross_account_keys=True,  # stages in other accounts read artifacts through the pipeline's KMS key
            enable_key_rotation=True,
            docker_enabled_for_synth=False,
            code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(build_image=codebuild.LinuxBuildImage.STANDARD_7_0)),
        )  # fmt: skip
        base_pull = self._base_image_cache()
        self.image_build = pipelines.CodeBuildStep(
            "BuildWorkerImage",
            input=source,
            env={"IMAGE_TAG": commit, "IMAGE_REPOSITORY_URI": self.images.repository_uri,
                 **({"BASE_REGISTRY": self.base_registry} if base_pull else {})},
            build_environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0, privileged=True,
                compute_type=codebuild.ComputeType.LARGE),
            commands=["bash containers/publish.sh"],
            role_policy_statements=[
                iam.PolicyStatement(actions=[*IMAGE_PULL_ACTIONS, *IMAGE_PUSH_ACTIONS],
                                    resources=[self.images.repository_arn]),
                iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]),
                *base_pull,
            ],
            timeout=Duration.minutes(120),
        )  # fmt: skip
        self.pipeline.add_wave("Image", pre=[self.image_build])

        self._smoke_role: iam.Role | None = None
        self.stages: dict[str, PrismStage] = {}
        self.smoke_tests: dict[str, pipelines.CodeBuildStep] = {}
        for promotion, env in zip(config.stages, self._environments(image_tag, version)):
            stage = self.stages[env.name] = PrismStage(self, env.name, config=env, nag=nag)
            pre = [pipelines.ManualApprovalStep(f"Approve-{env.name}", comment=approval_comment(promotion))]
            post = [self._smoke_test(promotion, stage)] if promotion.smoke_test else []
            self.pipeline.add_stage(stage, pre=pre if promotion.approval else [], post=post)

        self.pipeline.build_pipeline()
        self._grant_connection()
        self.topic = self._notifications()
        self._suppress()

    def _base_image_cache(self) -> list[iam.PolicyStatement]:
        """Docker Hub's nvidia/cuda through an ECR pull-through cache: no anonymous pull limits, and the base
        image is scanned and kept in the account. Returns what the image build needs to pull through it."""
        if not self.config.docker_hub_secret_arn:
            return []
        prefix = self.config.base_image_cache_prefix
        ecr.CfnPullThroughCacheRule(
            self, "DockerHubCache", ecr_repository_prefix=prefix, upstream_registry="docker-hub",
            upstream_registry_url="registry-1.docker.io", credential_arn=self.config.docker_hub_secret_arn)  # fmt: skip
        self.base_registry = f"{self.account}.dkr.ecr.{self.region}.{self.url_suffix}/{prefix}"
        cached = self.format_arn(service="ecr", resource="repository", resource_name=f"{prefix}/*")
        return [iam.PolicyStatement(actions=[*IMAGE_PULL_ACTIONS, "ecr:BatchImportUpstreamImage", "ecr:CreateRepository"],
                                    resources=[cached])]  # fmt: skip

    def _environments(self, image_tag: str, version: str):
        return [self.config.environment(s, image_tag=image_tag, version=version) for s in self.config.stages]

    def _image_repository(self, accounts: list[str]) -> ecr.Repository:
        """One repository for every environment: the image tested in dev is the one promoted to prod."""
        repository = ecr.Repository(
            self, "WorkerImages",
            repository_name=self.config.image_repository,
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,  # a commit's tag always names the same image
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[ecr.LifecycleRule(max_image_count=self.config.images_to_keep,
                                               description="keep recent commits for rollback")],
        )  # fmt: skip
        repository.add_to_resource_policy(iam.PolicyStatement(
            sid="EnvironmentsPull", principals=[iam.AccountPrincipal(a) for a in sorted(set(accounts))],
            actions=IMAGE_PULL_ACTIONS))  # fmt: skip
        return repository

    def _smoke_test(self, promotion: PromotionStage, stage: PrismStage) -> pipelines.CodeBuildStep:
        """A manual run on the sample title, through the role the environment's stack grants this account."""
        env = stage.stack.config
        role_arn = f"arn:{self.partition}:iam::{env.account}:role/{env.smoke_test_role_name}"
        args = ["--state-machine-arn", "$STATE_MACHINE_ARN", "--role-arn", "$SMOKE_TEST_ROLE_ARN",
                "--title", self.config.smoke_title, "--timeout-minutes", str(self.config.smoke_timeout_minutes)]  # fmt: skip
        if self.config.smoke_stages:
            args += ["--stages", ",".join(self.config.smoke_stages)]
        step = self.smoke_tests[env.name] = pipelines.CodeBuildStep(
            f"SmokeTest-{env.name}",
            input=self.source,
            env_from_cfn_outputs={"STATE_MACHINE_ARN": stage.outputs["StateMachineArn"],
                                  "SMOKE_TEST_ROLE_ARN": stage.outputs["SmokeTestRoleArn"]},
            install_commands=["python3 -m pip install -q boto3"],
            commands=["python3 -m prism.cloud.smoke " + " ".join(_quote(a) for a in args)],
            role=self._smoke_test_caller_role(),
            role_policy_statements=[iam.PolicyStatement(actions=["sts:AssumeRole"], resources=[role_arn])],
            timeout=Duration.minutes(self.config.smoke_timeout_minutes + 10),
        )  # fmt: skip
        return step

    def _smoke_test_caller_role(self) -> iam.Role:
        """The smoke-test step's CodeBuild role, with the fixed name each environment's smoke-test role trusts."""
        if self._smoke_role is None:
            self._smoke_role = iam.Role(self, "SmokeTestCaller", role_name=self.config.smoke_test_caller_role_name,
                                        assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"))  # fmt: skip
        return self._smoke_role

    def _grant_connection(self) -> None:
        """The source action's role gets ``codeconnections:UseConnection`` beside CDK's ``codestar-connections:``.

        CDK grants only the old ``codestar-connections:UseConnection``; a connection whose ARN is
        ``arn:aws:codeconnections:...`` (every connection created since the rename) is authorised
        by the new prefix, and without it the Source action fails (cfn-lint I3510).
        """
        source = self.pipeline.pipeline.node.find_child("Source")
        roles = [c for c in source.node.find_all() if isinstance(c, iam.Role)]
        if not roles:
            raise RuntimeError("the Source action has no role to grant the connection to")
        for role in roles:
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["codeconnections:UseConnection"],  # CDK grants the codestar-connections: one
                resources=[self.config.connection_arn]))  # fmt: skip

    def _notifications(self) -> sns.Topic | None:
        """Approval requests and failed/succeeded executions, by email (or any subscriber of the topic)."""
        if not self.config.approval_topic_name:
            return None
        key = kms.Key(self, "NotificationsKey", enable_key_rotation=True,
                      description="Prism pipeline notifications topic")  # fmt: skip
        key.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.ServicePrincipal("codestar-notifications.amazonaws.com")],
            actions=["kms:GenerateDataKey*", "kms:Decrypt"], resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": self.account}}))  # fmt: skip
        topic = sns.Topic(self, "Notifications", topic_name=self.config.approval_topic_name, master_key=key,
                          enforce_ssl=True)  # fmt: skip
        for email in self.config.approval_emails:
            topic.add_subscription(subscriptions.EmailSubscription(email))
        notifications.NotificationRule(
            self, "PipelineNotifications", source=self.pipeline.pipeline, events=APPROVAL_EVENTS, targets=[topic],
            detail_type=notifications.DetailType.BASIC)  # fmt: skip
        return topic

    def _suppress(self) -> None:
        """Every suppression names its rule, its reason and, for IAM5, the exact wildcards it accepts."""
        generated = {"id": "AwsSolutions-IAM5", "reason": "CDK Pipelines' generated grants: the artifact bucket's "
                     "objects (<bucket>/*, s3:GetObject*/List*/DeleteObject*/Abort*), its KMS key "
                     "(kms:GenerateDataKey*/ReEncrypt*), and each CodeBuild project's own log group (:*) and "
                     "report groups (-*).",
                     "applies_to": [
                         {"regex": "/^Action::(s3:(GetBucket|GetObject|List|Abort|DeleteObject)|kms:(GenerateDataKey|ReEncrypt))\\*$/g"},
                         {"regex": "/^Resource::<PipelineArtifactsBucket[A-Za-z0-9]+\\.Arn>\\/\\*$/g"},
                         {"regex": "/^Resource::arn:<AWS::Partition>:(logs|codebuild):[^:]+:[0-9]+:(log-group:\\/aws\\/codebuild\\/.*:\\*|report-group\\/.*-\\*)$/g"},
                     ]}  # fmt: skip
        NagSuppressions.add_resource_suppressions(self.pipeline.pipeline, [generated], apply_to_children=True)
        for project in self._codebuild_projects():
            NagSuppressions.add_resource_suppressions(project, [generated], apply_to_children=True)
        if self._smoke_role is not None:  # the smoke-test step's role carries the same generated grants
            NagSuppressions.add_resource_suppressions(self._smoke_role, [generated], apply_to_children=True)
        NagSuppressions.add_resource_suppressions(
            self.pipeline.self_mutation_project,
            [{"id": "AwsSolutions-IAM5", "reason": "Self-mutation runs cdk deploy: it assumes the CDK bootstrap "
              "roles (role/* limited by the iam:ResourceTag/aws-cdk:bootstrap-role condition) and needs "
              "cloudformation:DescribeStacks and s3:ListBucket, which CDK Pipelines grants on *.",
              "applies_to": ["Resource::*", {"regex": "/^Resource::arn:\\*:iam::[0-9]+:role\\/\\*$/g"}]}],
            apply_to_children=True,
        )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            self.image_build.project,
            [{"id": "AwsSolutions-IAM5", "reason": "ecr:GetAuthorizationToken has no resource-level permissions; "
              "pushes are limited to the worker image repository.", "applies_to": ["Resource::*"]},
             {"id": "AwsSolutions-IAM5", "reason": "The pull-through cache creates one repository per upstream image "
              "under its prefix on first pull (docker-hub/*); the build may pull, import and create only there.",
              "applies_to": [{"regex": "/^Resource::arn:<AWS::Partition>:ecr:.*:repository\\/.*\\/\\*$/g"}]},
             {"id": "AwsSolutions-CB3", "reason": "docker build needs privileged mode; the project builds only "
              "containers/Dockerfile from this repository's commit."}],
            apply_to_children=True,
        )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            self.synth.project,
            [{"id": "AwsSolutions-CB5", "reason": "The test step runs .ci/run, whose scripts/setup.sh targets "
              "Debian (apt packages such as chromium); CodeBuild's managed images are Ubuntu/Amazon Linux. The "
              "image is the official Node image from the ECR Public Docker library (PipelineConfig.synth_image)."}],
            apply_to_children=True,
        )  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            self.pipeline.pipeline.artifact_bucket,
            [{"id": "AwsSolutions-S1", "reason": "The pipeline's artifact bucket holds transient build artifacts "
              "(KMS-encrypted, TLS-only, private); CloudTrail data events cover access when needed."}],
            apply_to_children=True,
        )  # fmt: skip
        asset_roles = [c for c in self.pipeline.node.find_all()
                       if isinstance(c, iam.Role) and c.node.path.endswith("/Assets/FileRole")]  # fmt: skip
        NagSuppressions.add_resource_suppressions(
            asset_roles,
            [{"id": "AwsSolutions-IAM5", "reason": "CDK Pipelines' asset publishing role: codebuild:StartBuild/"
              "BatchGetBuilds/StopBuild on * (its asset projects are created after the role), plus the generated "
              "artifact, log-group and report-group grants described on the other CodeBuild roles.",
              "applies_to": ["Resource::*", *generated["applies_to"]]}],
            apply_to_children=True,
        )  # fmt: skip

    def _codebuild_projects(self) -> list[codebuild.Project]:
        """The CodeBuild projects CDK Pipelines made for the synth, self-mutation, asset and step actions."""
        return [c for c in self.node.find_all() if isinstance(c, codebuild.Project)]


def synth_command(cli: str) -> str:
    """``cdk synth`` of the pipeline app with this commit's image tag, in the venv ``.ci/run`` built."""
    return f'. .venv/bin/activate && npx -y {cli} synth --app "{PIPELINE_APP}" -c image_tag="$IMAGE_TAG"'


def approval_comment(promotion: PromotionStage) -> str:
    """Fixed text: anything per commit here would change the pipeline's own template and restart it."""
    return (f"Deploy Prism to {promotion.env}: the previous environment is deployed and its checks passed. "
            "The execution's commit is the worker image tag (ImageTag output).")  # fmt: skip


def _quote(arg: str) -> str:
    """Shell-quote, leaving ``$VARS`` to expand (they come from the stage's CfnOutputs)."""
    return f'"{arg}"' if arg.startswith("$") else shlex.quote(arg)
