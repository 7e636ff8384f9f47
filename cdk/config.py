"""Per-environment settings: plain, typed data selected by ``-c env=<name>``.

Constructs receive these values and never branch on the environment's name. Account ids are
placeholders to replace with yours (or leave ``account`` as ``None`` in dev to deploy into
whatever account your credentials select, via ``CDK_DEFAULT_ACCOUNT``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

POWERTOOLS_LAYER_ACCOUNT = "017000801446"
LOG_RETENTION_DAYS = (1, 7, 14, 30, 60, 90, 180, 365, 731)  # AWS's public Powertools for AWS Lambda layers


@dataclass(frozen=True)
class StageSpec:
    """One stage as a Batch job: resources, time limit, and the stages it needs first."""

    name: str
    requires: tuple[str, ...] = ()
    vcpus: float = 4
    memory_mib: int = 15_000
    gpus: int = 1
    timeout_minutes: int = 30
    attempts: int = 3

    def __post_init__(self) -> None:
        if self.vcpus <= 0 or self.memory_mib < 512 or self.gpus < 0:
            raise ValueError(f"stage {self.name}: vcpus > 0, memory >= 512 MiB and gpus >= 0 required")
        if not 1 <= self.attempts <= 10:
            raise ValueError(f"stage {self.name}: Batch allows 1..10 attempts")
        if not 1 <= self.timeout_minutes <= 40:
            raise ValueError(f"stage {self.name}: timeout must fit the 40 minute per-title target")


# The stage graph mirrors prism/stages (tests/cdk checks the names and requires agree).
# Sized for a g6.xlarge (4 vCPU, 16 GiB, 1 NVIDIA L4); cues and keyframes need no GPU.
DEFAULT_STAGES: tuple[StageSpec, ...] = (
    StageSpec("shots", vcpus=4, memory_mib=14_000, gpus=1, timeout_minutes=25),
    StageSpec("keyframes", requires=("shots",), vcpus=2, memory_mib=7_000, gpus=0, timeout_minutes=10),
    StageSpec("embeddings", requires=("keyframes",), vcpus=4, memory_mib=14_000, gpus=1, timeout_minutes=5),
    StageSpec("cues", vcpus=2, memory_mib=4_000, gpus=0, timeout_minutes=25),
    StageSpec("audio", vcpus=4, memory_mib=14_000, gpus=1, timeout_minutes=35),
)


@dataclass(frozen=True)
class EnvironmentConfig:
    name: str
    account: str | None
    region: str
    availability_zones: tuple[str, ...]
    # input: the upstream platform's bucket of transcoded videos, imported read-only
    input_bucket_name: str
    input_prefix: str
    input_bucket_kms_key_arn: str | None = None
    video_suffixes: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".mxf")
    # schedule
    schedule_expression: str = "cron(0 2 * * ? *)"
    schedule_time_zone: str = "Asia/Seoul"
    schedule_enabled: bool = True
    # compute
    gpu_instance_types: tuple[str, ...] = ("g6.xlarge", "g6.2xlarge", "g5.xlarge", "g5.2xlarge")
    max_vcpus: int = 64
    spot: bool = True  # spot first with on-demand fallback; False: on-demand only
    root_volume_gib: int = 200  # scratch space for the source and decodes
    vpc_cidr: str = "10.40.0.0/16"
    # worker image, built and pushed by the pipeline (see containers/)
    image_repository: str = "prism-worker"
    image_tag: str = "latest"  # also the pipeline version discover compares against, unless `version` is set
    image_repository_arn: str | None = None  # the pipeline's, in the tooling account; None: image_repository here
    version: str | None = None  # the pipeline version discover compares; None: image_tag
    model_location: str | None = None  # s3://bucket/prefix; None = weights baked into the image
    stages: tuple[StageSpec, ...] = DEFAULT_STAGES
    # orchestration
    max_concurrent_titles: int = 20
    watermark_overlap_s: int = 3600
    lambda_architecture: str = "x86_64"
    powertools_layer_version: int = 18
    # retention and alarms
    log_retention_days: int = 30
    noncurrent_version_days: int = 30
    run_items_days: int = 14
    retain_data: bool = False  # RETAIN the bucket, table and key on stack deletion
    alarm_emails: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    # the tooling account whose pipeline runs the post-deploy smoke test (a role it may assume); None: no role
    smoke_test_account: str | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: stage names repeat: {names}")
        for spec in self.stages:
            early = set(names[: names.index(spec.name)])
            if not set(spec.requires) <= early:
                raise ValueError(f"{self.name}: stage {spec.name} must come after {sorted(set(spec.requires) - early)}")
        if not self.availability_zones:
            raise ValueError(f"{self.name}: list at least one availability zone")
        if self.max_vcpus < max(s.vcpus for s in self.stages):
            raise ValueError(f"{self.name}: max_vcpus is below the largest stage")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(f"{self.name}: log_retention_days must be one of {LOG_RETENTION_DAYS}")
        if self.model_location and not self.model_location.startswith("s3://"):
            raise ValueError(f"{self.name}: model_location must be an s3:// URI")

    @property
    def stack_name(self) -> str:
        return f"Prism-{self.name}"

    @property
    def pipeline_version(self) -> str:
        return self.version or self.image_tag

    @property
    def smoke_test_role_name(self) -> str:
        return f"prism-{self.name}-smoke-test"

    @property
    def powertools_layer_arn(self) -> str:
        arch = "x86_64" if self.lambda_architecture == "x86_64" else "arm64"
        return (
            f"arn:aws:lambda:{self.region}:{POWERTOOLS_LAYER_ACCOUNT}:layer:"
            f"AWSLambdaPowertoolsPythonV3-python313-{arch}:{self.powertools_layer_version}"
        )

    def stage_graph(self) -> dict[str, list[str]]:
        return {s.name: list(s.requires) for s in self.stages}


ENVIRONMENTS: dict[str, EnvironmentConfig] = {
    "dev": EnvironmentConfig(
        name="dev",
        account=None,
        region="ap-northeast-2",
        availability_zones=("ap-northeast-2a", "ap-northeast-2c"),
        input_bucket_name="media-delivery-dev",
        input_prefix="transcoded/",
        gpu_instance_types=("g6.xlarge", "g5.xlarge"),
        max_vcpus=16,
        image_tag="dev",
        max_concurrent_titles=5,
        log_retention_days=14,
        noncurrent_version_days=7,
        schedule_enabled=True,
    ),
    "staging": EnvironmentConfig(
        name="staging",
        account="222222222222",
        region="ap-northeast-2",
        availability_zones=("ap-northeast-2a", "ap-northeast-2b", "ap-northeast-2c"),
        input_bucket_name="media-delivery-staging",
        input_prefix="transcoded/",
        max_vcpus=64,
        image_tag="staging",
        log_retention_days=30,
        retain_data=True,
    ),
    "prod": EnvironmentConfig(
        name="prod",
        account="333333333333",
        region="ap-northeast-2",
        availability_zones=("ap-northeast-2a", "ap-northeast-2b", "ap-northeast-2c"),
        input_bucket_name="media-delivery-prod",
        input_prefix="transcoded/",
        input_bucket_kms_key_arn=None,
        max_vcpus=512,
        image_tag="prod",
        max_concurrent_titles=100,
        log_retention_days=365,
        noncurrent_version_days=90,
        retain_data=True,
        alarm_emails=("prism-oncall@example.com",),
    ),
}


def load(name: str, **overrides: object) -> EnvironmentConfig:
    """The named environment, with optional field overrides (``-c account=...``, tests)."""
    if name not in ENVIRONMENTS:
        raise KeyError(f"unknown environment {name!r}; choose one of {sorted(ENVIRONMENTS)}")
    base = ENVIRONMENTS[name]
    return replace(base, **overrides) if overrides else base


# -- the CI/CD pipeline (cdk/pipeline.py, `cdk synth --app "python -m cdk.pipeline_app"`) ---------------------


@dataclass(frozen=True)
class PromotionStage:
    """One environment the pipeline deploys, in order."""

    env: str  # a key of ENVIRONMENTS
    account: str | None = None  # overrides the environment's account (dev's is None for laptop deploys)
    approval: bool = False  # a manual approval before this environment is deployed
    smoke_test: bool = False  # after deploying, run a manual execution on the smoke title and require success


@dataclass(frozen=True)
class PipelineConfig:
    """The tooling account's pipeline: source, build images, and the environments it promotes through."""

    account: str
    region: str
    connection_arn: str  # a CodeConnections (CodeStar) connection, created and authorised once in the console
    repository: str  # owner/name on the connected provider
    branch: str
    stages: tuple[PromotionStage, ...]
    pipeline_name: str = "prism"
    stack_name: str = "Prism-pipeline"
    image_repository: str = "prism-worker"  # ECR, in the tooling account; every environment pulls from it
    images_to_keep: int = 50  # ECR lifecycle: older commit tags expire (keep enough to roll back)
    # The test + synth step runs .ci/run (scripts/setup.sh targets Debian), so a Debian image with Node for the CLI.
    synth_image: str = "public.ecr.aws/docker/library/node:22-bookworm"
    cdk_cli: str = "aws-cdk@2"
    smoke_title: str = "prism-smoke-sample"  # a short video under the dev input prefix (docs/deploy.md)
    smoke_stages: tuple[str, ...] = ()  # () = every stage: the new image must run them all
    smoke_timeout_minutes: int = 50  # GPU instances start from zero and pull the image first
    approval_topic_name: str | None = "prism-pipeline-approvals"  # SNS topic for approval requests; None: no topic
    approval_emails: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.env for s in self.stages]
        if not names or len(set(names)) != len(names) or not set(names) <= set(ENVIRONMENTS):
            raise ValueError(f"pipeline stages must name distinct environments of {sorted(ENVIRONMENTS)}: {names}")
        for stage in self.stages:
            if not (stage.account or ENVIRONMENTS[stage.env].account):
                raise ValueError(f"pipeline stage {stage.env}: the pipeline needs its account in config")
            if ENVIRONMENTS[stage.env].region != self.region:
                raise ValueError(f"pipeline stage {stage.env}: workers pull the image from {self.region}; "
                                 "add a replicated repository before deploying to another region")  # fmt: skip
        if not 5 <= self.smoke_timeout_minutes <= 480:
            raise ValueError("smoke_timeout_minutes must fit a CodeBuild build (5..480)")
        if not self.connection_arn.startswith("arn:") or self.repository.count("/") != 1:
            raise ValueError("connection_arn must be an ARN and repository owner/name")

    @property
    def image_repository_arn(self) -> str:
        return f"arn:aws:ecr:{self.region}:{self.account}:repository/{self.image_repository}"

    def environment(self, stage: PromotionStage, *, image_tag: str, version: str) -> EnvironmentConfig:
        """The stage's environment as the pipeline deploys it: its account, this pipeline's image and version."""
        base = ENVIRONMENTS[stage.env]
        return replace(
            base, account=stage.account or base.account, image_repository=self.image_repository,
            image_repository_arn=self.image_repository_arn, image_tag=image_tag, version=version,
            smoke_test_account=self.account if stage.smoke_test else None,
        )  # fmt: skip


PIPELINE = PipelineConfig(
    account="444444444444",  # tooling (placeholder: yours)
    region="ap-northeast-2",
    connection_arn="arn:aws:codeconnections:ap-northeast-2:444444444444:connection/00000000-0000-0000-0000-000000000000",
    repository="example-org/prism",
    branch="main",
    stages=(
        PromotionStage("dev", account="111111111111", smoke_test=True),
        PromotionStage("staging", approval=True),
        PromotionStage("prod", approval=True),
    ),
    approval_emails=("prism-leads@example.com",),
)
