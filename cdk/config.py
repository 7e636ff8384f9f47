"""Per-environment settings: plain, typed data selected by ``-c env=<name>``.

Constructs receive these values and never branch on the environment's name. Account ids are
placeholders to replace with yours (or leave ``account`` as ``None`` in dev to deploy into
whatever account your credentials select, via ``CDK_DEFAULT_ACCOUNT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from prism.cloud.delivery import Delivery, DeliveryError

POWERTOOLS_LAYER_ACCOUNT = "017000801446"
EXECUTION_TIMEOUT_HOURS = 12  # the state machine's timeout (cdk/orchestration.py)
MODEL_DIR = "/opt/prism/models"  # containers/Dockerfile: PRISM_MODEL_DIR, where weights are baked or synced
# Stages whose model is configuration, not shipped in a wheel: the config field naming it, and the worker's variable.
MODEL_STAGES = {"embeddings": ("embeddings_model", "PRISM_EMBEDDINGS_MODEL")}
# vCPUs, MiB and GPUs of the instance types configs name: a job must fit one of its environment's types.
INSTANCE_SIZES = {
    "g6.xlarge": (4, 16_384, 1), "g6.2xlarge": (8, 32_768, 1), "g6.4xlarge": (16, 65_536, 1),
    "g5.xlarge": (4, 16_384, 1), "g5.2xlarge": (8, 32_768, 1), "g5.4xlarge": (16, 65_536, 1),
}  # fmt: skip
INPUT_BUCKET_ENCRYPTIONS = ("SSE-S3", "SSE-KMS")
LOG_RETENTION_DAYS = (1, 7, 14, 30, 60, 90, 180, 365, 731)  # AWS's public Powertools for AWS Lambda layers


@dataclass(frozen=True)
class JobSpec:
    """One Batch job definition: a group of stages that one worker runs in one ``Runner`` call.

    The stages of a job share one download of the source and one decode of each stream
    (``SharedMedia``), so stages that read the same stream belong in the same job. ``requires``
    names the jobs that must finish first; ``environment`` is added to the job definition's.
    """

    name: str
    stages: tuple[str, ...]
    requires: tuple[str, ...] = ()
    vcpus: float = 4
    memory_mib: int = 15_000
    gpus: int = 1
    timeout_minutes: int = 30
    attempts: int = 3
    environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"job {self.name}: list its stages, each once")
        if self.vcpus <= 0 or self.memory_mib < 512 or self.gpus < 0:
            raise ValueError(f"job {self.name}: vcpus > 0, memory >= 512 MiB and gpus >= 0 required")
        if not 1 <= self.attempts <= 10:
            raise ValueError(f"job {self.name}: Batch allows 1..10 attempts")
        if not 1 <= self.timeout_minutes <= 40:
            raise ValueError(f"job {self.name}: timeout must fit the 40 minute per-title target")
        if self.environment.get("PRISM_HWACCEL") and not self.gpus:
            # ffmpeg exits with "Device setup failed" when the hwaccel device cannot be created
            # (it falls back to software only when the device exists but cannot decode the codec).
            raise ValueError(f"job {self.name}: PRISM_HWACCEL needs a GPU (gpus >= 1)")


def registered_stage_graph() -> dict[str, list[str]]:
    """Stage -> stages it requires, from the stage registry (the worker image's code)."""
    from prism.stages.base import registry

    return {name: list(cls.requires) for name, cls in registry().items()}


def check_jobs(jobs: tuple[JobSpec, ...], graph: dict[str, list[str]]) -> None:
    """Raise ValueError unless ``jobs`` deploy every stage of ``graph`` exactly once, with job
    dependencies that follow the stages' ``requires`` (a required stage runs earlier in the same
    job or in a job this one requires, directly or not), and each job after the jobs it requires."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names repeat: {names}")
    home: dict[str, str] = {}
    for job in jobs:
        for stage in job.stages:
            if stage not in graph:
                raise ValueError(f"job {job.name}: unknown stage {stage!r}; registered: {list(graph)}")
            if stage in home:
                raise ValueError(f"stage {stage} is in jobs {home[stage]} and {job.name}")
            home[stage] = job.name
    if missing := [s for s in graph if s not in home]:
        raise ValueError(f"registered stage(s) {missing} are in no job (with_default_jobs gives each one)")
    before: dict[str, set[str]] = {}  # job -> jobs that finish before it (transitively)
    for job in jobs:
        unknown = [r for r in job.requires if r not in before]
        if unknown:
            raise ValueError(f"job {job.name} must come after {unknown} (and they must exist)")
        before[job.name] = set(job.requires).union(*(before[r] for r in job.requires))
        order = list(job.stages)
        for stage in job.stages:
            for dep in graph[stage]:
                if home[dep] == job.name:
                    if order.index(dep) > order.index(stage):
                        raise ValueError(f"job {job.name}: list {dep} before {stage}")
                elif home[dep] not in before[job.name]:
                    raise ValueError(f"job {job.name}: stage {stage} requires {dep}, so require job {home[dep]}")


def with_default_jobs(jobs: tuple[JobSpec, ...], graph: dict[str, list[str]]) -> tuple[JobSpec, ...]:
    """``jobs`` plus one job of ``JobSpec``'s default size (1 GPU) for each stage of ``graph`` that no job
    names, requiring the jobs of the stages it requires: a new stage deploys without editing the job layout.

    Default jobs come after the configured ones, each after the jobs it requires; a stage is never moved
    out of a configured job, so ``check_jobs`` still refuses real mistakes (a stage in two jobs, a job
    listed before its requirements)."""
    home = {stage: job.name for job in jobs for stage in job.stages}
    names = {job.name for job in jobs}
    added: list[JobSpec] = []
    pending = [stage for stage in graph if stage not in home]
    while pending:
        ready = [s for s in pending if all(dep in home or dep not in graph for dep in graph[s])]
        if not ready:  # a cycle among new stages: leave it to check_jobs/resolve_order to name
            raise ValueError(f"stage(s) {pending} require each other; they cannot be given jobs")
        for stage in ready:
            if stage in names:
                raise ValueError(f"stage {stage} is in no job and a job is already named {stage!r}; list it in a job")
            requires = tuple(dict.fromkeys(home[dep] for dep in graph[stage] if dep in home))
            added.append(JobSpec(stage, stages=(stage,), requires=requires))
            home[stage], names = stage, names | {stage}
            pending.remove(stage)
    return (*jobs, *added)


# One Batch job per title by default: the worker downloads the source once, decodes the video once
# (NVDEC, PRISM_HWACCEL=cuda) for shots, keyframes and the black/freeze cues, embeds the keyframes
# it already has on disk, and runs the audio stage beside them on the same GPU (the stages'
# concurrency groups, prism/schedule.py): no second instance, download or job start per title.
# QC reads that same visual pass and audio decode, so it runs in this job (a job of its own would decode again).
# Sized from the measured profile (docs/benchmarks.md, "Stage concurrency and job size"): the
# title is decode-bound, and a 2 h 1080p title in 5 min needs about 576 decoded frames/s, which
# is 9-14 cores of CPU decode at the 43-62 frames/s per core measured on a 16-core GPU host (the
# chunked visual pass spreads one title over them; NVDEC takes most of that load when it can
# decode the codec); the audio group's CPU side (VAD, resampling, speaker embeddings) and the
# keyframe seeks take the rest of a 16 vCPU instance. Memory: peak RSS ~1.2 GiB on CPU plus the
# host copies of the GPU models (Whisper large-v3-turbo, the CLIP/SigLIP model, TransNetV2) and
# the page cache of the 48x27 frame file: 30 GiB.
DEFAULT_JOBS: tuple[JobSpec, ...] = (
    JobSpec("title", stages=("shots", "keyframes", "cues", "audio", "embeddings", "qc", "posters"), vcpus=16, memory_mib=30_000,
            gpus=1, timeout_minutes=35, environment={"PRISM_HWACCEL": "cuda"}),
)  # fmt: skip
# The same stages as one job per decoded stream (the layout before stage concurrency): visual on a
# 2xlarge, embeddings after it and audio beside it on an xlarge each. Three instances, downloads and
# job starts per title; for a deployment that wants a failed audio job retried on its own.
SPLIT_JOBS: tuple[JobSpec, ...] = (
    JobSpec("visual", stages=("shots", "keyframes", "cues", "qc", "posters"), vcpus=8, memory_mib=28_000, gpus=1,
            timeout_minutes=35, environment={"PRISM_HWACCEL": "cuda"}),
    JobSpec("embeddings", stages=("embeddings",), requires=("visual",), vcpus=4, memory_mib=14_000, gpus=1,
            timeout_minutes=5),
    JobSpec("audio", stages=("audio",), vcpus=4, memory_mib=14_000, gpus=1, timeout_minutes=35),
)  # fmt: skip


CONSUMER_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}$")


@dataclass(frozen=True)
class Consumer:
    """A downstream team in its own account: reads artifacts and tables, queries Athena, hears Prism's events."""

    name: str  # content-qc | posters | localization ...: the role is prism-<env>-consumer-<name>
    account: str  # the 12-digit account its role may be assumed from, and whose rules may sit on Prism's bus

    def __post_init__(self) -> None:
        if not CONSUMER_NAME.match(self.name):
            raise ValueError(f"consumer name {self.name!r}: lowercase letters, digits and '-', 2..31 characters")
        if not (len(self.account) == 12 and self.account.isdigit()):
            raise ValueError(f"consumer {self.name}: account must be 12 digits, got {self.account!r}")


@dataclass(frozen=True)
class EnvironmentConfig:
    name: str
    account: str | None
    region: str
    availability_zones: tuple[str, ...]
    # input: the upstream platform's bucket of transcoded videos, imported read-only
    input_bucket_name: str
    input_prefix: str
    # How the upstream platform encrypts the delivered videos: "SSE-S3" (S3-managed keys) or "SSE-KMS" (a customer
    # key, whose ARN input_bucket_kms_key_arn must give: without kms:Decrypt on it every GetObject is AccessDenied).
    # No default: each environment states it, checked at synth.
    input_bucket_encryption: str
    input_bucket_kms_key_arn: str | None = None
    video_suffixes: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".mxf")
    # the delivery contract (docs/deploy.md): which keys are titles, their ids, the rendition processed, what is ignored
    delivery: Delivery = Delivery()
    # schedule
    schedule_expression: str = "cron(0 2 * * ? *)"
    schedule_time_zone: str = "Asia/Seoul"
    schedule_enabled: bool = True
    # compute
    gpu_instance_types: tuple[str, ...] = ("g6.4xlarge", "g5.4xlarge")
    max_vcpus: int = 64  # the cap for spot and on-demand together
    spot: bool = True  # spot first with on-demand fallback; False: on-demand only
    on_demand_max_vcpus: int | None = None  # on-demand's part of max_vcpus when spot; None: half
    spot_wait_minutes: int = 30  # a job waiting this long for Spot capacity is resubmitted on demand
    root_volume_gib: int = 200  # scratch space for the source and decodes
    vpc_cidr: str = "10.40.0.0/16"
    # worker image, built and pushed by the pipeline (see containers/)
    image_repository: str = "prism-worker"
    image_tag: str = "latest"  # also the pipeline version discover compares against, unless `version` is set
    image_repository_arn: str | None = None  # the pipeline's, in the tooling account; None: image_repository here
    version: str | None = None  # the pipeline version discover compares; None: image_tag
    model_location: str | None = (
        None  # s3://bucket/prefix synced to MODEL_DIR at job start; None = baked into the image
    )
    # The embeddings model: a directory (transformers save_pretrained) under model_location or baked into the image
    # under MODEL_DIR. Required when the embeddings stage is deployed: without it every title would "succeed"
    # with embeddings skipped.
    embeddings_model: str | None = None
    # The ASR model of the audio stage: a CTranslate2 Whisper directory under model_location or baked into the image
    # under MODEL_DIR (production: faster-whisper-large-v3-turbo or -large-v3). None: the multilingual Whisper base
    # that ships in the image's wheels (dev, smoke tests).
    asr_model: str | None = None
    # Speaker turns from a pyannote.audio pipeline directory under model_location or baked into the image under
    # MODEL_DIR (e.g. pyannote-speaker-diarization-community-1; docs/deploy.md). None: the built-in resemblyzer turns.
    speaker_model: str | None = None
    # The language hint the audio stage gets when a run names none for a title (ISO 639-1/-2, e.g. "ko" for a
    # Korean-first catalogue); "" = the audio track's language tag, if any. Detection still wins when it clearly
    # disagrees, so a foreign film is not transcribed as Korean.
    language_hint: str = ""
    # the job groups; a registered stage none of them names gets a job of its own (with_default_jobs)
    jobs: tuple[JobSpec, ...] = DEFAULT_JOBS
    # orchestration
    max_concurrent_titles: int = 20
    # titles a scheduled run takes at most (the rest wait for the next run): sized so a run finishes within the
    # state machine's timeout even when every title takes its jobs' full time; None: the most that fits
    max_titles_per_run: int | None = None
    # scheduled runs that take a title that failed on its host (not its input) before it is parked and alarmed on
    max_attempts: int = 3
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
    # the role (ARN) of the pipeline's smoke-test step, trusted to assume this environment's smoke-test role; None: no role
    smoke_test_caller_arn: str | None = None
    # accounts other than this one that own buckets the workers read (the upstream input bucket, the model bucket):
    # the S3 gateway endpoint's policy allows only this account's buckets, these, and ECR's layer bucket
    external_bucket_accounts: tuple[str, ...] = ()
    # downstream teams with read-only access (artifacts, tables, Athena) and event rules on the bus
    consumers: tuple[Consumer, ...] = ()
    athena_bytes_scanned_cutoff: int = 10 * 1024**3  # per query, in the consumers' workgroup (min 10 MB)
    event_archive_days: int = 30  # Prism's events kept for replay

    def __post_init__(self) -> None:
        names = [c.name for c in self.consumers]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: consumer names repeat: {names}")
        if self.account is not None and any(c.account == self.account for c in self.consumers):
            raise ValueError(f"{self.name}: a consumer account is this environment's own; grant it in the stack")
        if self.athena_bytes_scanned_cutoff < 10 * 1024**2:
            raise ValueError(f"{self.name}: athena_bytes_scanned_cutoff must be >= 10 MB (Athena's minimum)")
        try:
            graph = registered_stage_graph()
            object.__setattr__(self, "jobs", with_default_jobs(self.jobs, graph))  # frozen: set once, here
            check_jobs(self.jobs, graph)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from exc
        if self.input_bucket_encryption not in INPUT_BUCKET_ENCRYPTIONS:
            raise ValueError(f"{self.name}: input_bucket_encryption must be one of {INPUT_BUCKET_ENCRYPTIONS}, "
                             f"got {self.input_bucket_encryption!r}")  # fmt: skip
        if self.input_bucket_encryption == "SSE-KMS" and not self.input_bucket_kms_key_arn:
            raise ValueError(
                f"{self.name}: the input bucket {self.input_bucket_name} is encrypted with a customer key (SSE-KMS) but "
                "input_bucket_kms_key_arn is not set: the workers could not decrypt a single delivered video; set it to "
                "the key's ARN (and have its owner allow this account kms:Decrypt in the key policy)"
            )
        if self.input_bucket_kms_key_arn and (
            self.input_bucket_encryption != "SSE-KMS" or not self.input_bucket_kms_key_arn.startswith("arn:")
        ):
            raise ValueError(f"{self.name}: input_bucket_kms_key_arn is a key ARN and goes with "
                             "input_bucket_encryption='SSE-KMS'")  # fmt: skip
        if not self.availability_zones:
            raise ValueError(f"{self.name}: list at least one availability zone")
        largest = max(j.vcpus for j in self.jobs)
        if self.max_vcpus < largest:
            raise ValueError(f"{self.name}: max_vcpus is below the largest job")
        if self.spot and min(self.on_demand_vcpus, self.max_vcpus - self.on_demand_vcpus) < largest:
            raise ValueError(
                f"{self.name}: spot and on-demand split max_vcpus={self.max_vcpus} "
                f"(on demand {self.on_demand_vcpus}); each part must fit the largest job ({largest})"
            )
        if self.max_titles_per_run is not None and not 1 <= self.max_titles_per_run <= self.titles_per_run_limit:
            raise ValueError(f"{self.name}: max_titles_per_run must be 1..{self.titles_per_run_limit}: "
                             f"{self.concurrent_titles} at a time (max_vcpus {self.max_vcpus} / {self.title_vcpus} "
                             f"vCPUs a title, max_concurrent_titles {self.max_concurrent_titles}), each up to "
                             f"{self.title_minutes} min, must finish within the {EXECUTION_TIMEOUT_HOURS} h "
                             "execution timeout")  # fmt: skip
        if not 1 <= self.max_attempts <= 10:
            raise ValueError(f"{self.name}: max_attempts must be 1..10")
        try:
            Delivery.from_json({**self.delivery.to_json(), "video_suffixes": list(self.video_suffixes)})
        except DeliveryError as exc:
            raise ValueError(f"{self.name}: {exc}") from exc
        if not 10 <= self.spot_wait_minutes <= 24 * 60:
            raise ValueError(f"{self.name}: spot_wait_minutes must be 10..1440")
        sizes = [INSTANCE_SIZES[t] for t in self.gpu_instance_types if t in INSTANCE_SIZES]
        for job in self.jobs:  # ECS keeps some memory for itself, hence the 5% margin
            if sizes and not any(job.vcpus <= c and job.memory_mib <= m * 0.95 and job.gpus <= g for c, m, g in sizes):
                raise ValueError(f"{self.name}: job {job.name} fits none of {self.gpu_instance_types}")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(f"{self.name}: log_retention_days must be one of {LOG_RETENTION_DAYS}")
        if self.model_location and not self.model_location.startswith("s3://"):
            raise ValueError(f"{self.name}: model_location must be an s3:// URI")
        deployed = {s for j in self.jobs for s in j.stages}
        for stage, (setting, _) in MODEL_STAGES.items():
            model = getattr(self, setting)
            if stage in deployed and not model:
                raise ValueError(
                    f"{self.name}: the {stage} stage is deployed but {setting} is not set; name the model directory "
                    f"(under model_location, or baked into the image under {MODEL_DIR}; docs/deploy.md, Model weights)"
                )
            if model and (model.startswith("/") or ".." in model.split("/")):
                raise ValueError(f"{self.name}: {setting} is a directory relative to {MODEL_DIR}, got {model!r}")
        if self.speaker_model and (self.speaker_model.startswith("/") or ".." in self.speaker_model.split("/")):
            raise ValueError(
                f"{self.name}: speaker_model is a directory relative to {MODEL_DIR}, got {self.speaker_model!r}"
            )
        if self.asr_model and (self.asr_model.startswith("/") or ".." in self.asr_model.split("/")):
            raise ValueError(f"{self.name}: asr_model is a directory relative to {MODEL_DIR}, got {self.asr_model!r}")
        if self.language_hint and not re.fullmatch(r"[a-z]{2,3}", self.language_hint):
            raise ValueError(
                f"{self.name}: language_hint is an ISO 639-1/-2 code such as 'ko', got {self.language_hint!r}"
            )

    @property
    def delivery_json(self) -> dict:
        """``PRISM_DELIVERY``: the layout discover applies (its video suffixes travel in ``PRISM_VIDEO_SUFFIXES``)."""
        return {k: v for k, v in self.delivery.to_json().items() if k != "video_suffixes"}

    @property
    def stack_name(self) -> str:
        from prism.contract import STACK_NAME

        return STACK_NAME.format(env=self.name)

    @property
    def title_minutes(self) -> int:
        """What a title may take: its longest chain of jobs, each waiting for Spot and then run twice (a retry)."""
        from cdk.orchestration import job_chains

        return max(
            sum(j.timeout_minutes * 2 + self.spot_wait_minutes for j in chain) for chain in job_chains(self.jobs)
        )

    @property
    def title_vcpus(self) -> float:
        """vCPUs one title holds at its peak: the largest job of each chain, the chains running side by side."""
        from cdk.orchestration import job_chains

        return sum(max(j.vcpus for j in chain) for chain in job_chains(self.jobs))

    @property
    def concurrent_titles(self) -> int:
        """Titles that really run at once: the Map's limit, or what the queues' vCPUs hold if fewer.

        Both queues of a scheduled run (Spot first, then on demand) draw on ``max_vcpus`` together."""
        return max(1, min(self.max_concurrent_titles, int(self.max_vcpus // self.title_vcpus)))

    @property
    def titles_per_run_limit(self) -> int:
        return max(1, EXECUTION_TIMEOUT_HOURS * 60 // self.title_minutes) * self.concurrent_titles

    @property
    def titles_per_run(self) -> int:
        return self.max_titles_per_run or self.titles_per_run_limit

    @property
    def on_demand_vcpus(self) -> int:
        """On-demand's share of ``max_vcpus`` (all of it without spot): the two never add up to more."""
        if not self.spot:
            return self.max_vcpus
        return self.on_demand_max_vcpus if self.on_demand_max_vcpus is not None else self.max_vcpus // 2

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

    def model_environment(self, job: JobSpec) -> dict[str, str]:
        """The worker variables naming the models of ``job``'s stages, and that a missing one fails the job."""
        env = {var: f"{MODEL_DIR}/{getattr(self, setting)}"
               for stage, (setting, var) in MODEL_STAGES.items() if stage in job.stages}  # fmt: skip
        if "audio" in job.stages and self.asr_model:
            env["PRISM_ASR_MODEL"] = f"{MODEL_DIR}/{self.asr_model}"
        if "audio" in job.stages and self.speaker_model:
            env["PRISM_SPEAKER_MODEL"] = f"{MODEL_DIR}/{self.speaker_model}"
        return {**env, "PRISM_REQUIRE_MODELS": "true"} if env else {}

    def stage_graph(self) -> dict[str, list[str]]:
        """Stage -> stages it requires, in job order (so every stage comes after those it requires)."""
        graph = registered_stage_graph()
        return {stage: graph[stage] for job in self.jobs for stage in job.stages}

    @property
    def stage_names(self) -> list[str]:
        return list(self.stage_graph())


ENVIRONMENTS: dict[str, EnvironmentConfig] = {
    "dev": EnvironmentConfig(
        name="dev",
        account=None,
        region="ap-northeast-2",
        availability_zones=("ap-northeast-2a", "ap-northeast-2c"),
        input_bucket_name="media-delivery-dev",
        input_prefix="transcoded/",
        input_bucket_encryption="SSE-S3",
        max_vcpus=32,  # spot and on-demand 16 each: one title at a time on each
        image_tag="dev",
        model_location="s3://prism-models-dev/v1/",
        embeddings_model="siglip-base-patch16-224",
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
        input_bucket_encryption="SSE-S3",
        max_vcpus=64,
        image_tag="staging",
        model_location="s3://prism-models-staging/v1/",
        embeddings_model="siglip-base-patch16-224",
        asr_model="faster-whisper-large-v3-turbo",
        language_hint="ko",
        log_retention_days=30,
        retain_data=True,
        consumers=(
            Consumer("content-qc", "444444444444"),
            Consumer("posters", "555555555555"),
            Consumer("localization", "666666666666"),
        ),
    ),
    "prod": EnvironmentConfig(
        name="prod",
        account="333333333333",
        region="ap-northeast-2",
        availability_zones=("ap-northeast-2a", "ap-northeast-2b", "ap-northeast-2c"),
        input_bucket_name="media-delivery-prod",
        input_prefix="transcoded/",
        # Confirm with the delivery platform before the first deploy: a customer key needs "SSE-KMS" and its ARN.
        input_bucket_encryption="SSE-S3",
        input_bucket_kms_key_arn=None,
        max_vcpus=512,
        image_tag="prod",
        model_location="s3://prism-models-prod/v1/",
        embeddings_model="siglip-base-patch16-224",
        asr_model="faster-whisper-large-v3-turbo",
        language_hint="ko",
        max_concurrent_titles=100,
        log_retention_days=365,
        noncurrent_version_days=90,
        retain_data=True,
        alarm_emails=("prism-oncall@example.com",),
        consumers=(
            Consumer("content-qc", "444444444445"),
            Consumer("posters", "555555555556"),
            Consumer("localization", "666666666667"),
        ),
        event_archive_days=90,
    ),
}


def load(name: str, **overrides: object) -> EnvironmentConfig:
    """The named environment, with optional field overrides (``-c account=...``, tests)."""
    if name not in ENVIRONMENTS:
        raise KeyError(f"unknown environment {name!r}; choose one of {sorted(ENVIRONMENTS)}")
    # replace() rebuilds the config even without overrides, so stages registered since import get their jobs
    return replace(ENVIRONMENTS[name], **overrides)


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
    # Docker Hub credentials (a Secrets Manager secret named ecr-pullthroughcache/...) for the ECR pull-through
    # cache the worker image's nvidia/cuda base comes through; None: pull from Docker Hub directly
    docker_hub_secret_arn: str | None = None
    base_image_cache_prefix: str = "docker-hub"
    # The test + synth step runs .ci/run (scripts/setup.sh targets Debian), so a Debian image with Node for the CLI.
    synth_image: str = "public.ecr.aws/docker/library/node:22-bookworm"
    cdk_cli: str = "aws-cdk@2"
    smoke_title: str = "prism-smoke-sample"  # a short video under the dev input prefix (docs/deploy.md)
    smoke_stages: tuple[str, ...] = ()  # () = every stage: the new image must run them all
    smoke_timeout_minutes: int = 50  # GPU instances start from zero and pull the image first
    smoke_test_caller_role_name: str = "prism-pipeline-smoke-test"  # the smoke-test step's CodeBuild role
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

    @property
    def smoke_test_caller_arn(self) -> str:
        return f"arn:aws:iam::{self.account}:role/{self.smoke_test_caller_role_name}"

    def environment(self, stage: PromotionStage, *, image_tag: str, version: str) -> EnvironmentConfig:
        """The stage's environment as the pipeline deploys it: its account, this pipeline's image and version."""
        base = ENVIRONMENTS[stage.env]
        return replace(
            base, account=stage.account or base.account, image_repository=self.image_repository,
            image_repository_arn=self.image_repository_arn, image_tag=image_tag, version=version,
            smoke_test_caller_arn=self.smoke_test_caller_arn if stage.smoke_test else None,
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
    docker_hub_secret_arn="arn:aws:secretsmanager:ap-northeast-2:444444444444:secret:ecr-pullthroughcache/docker-hub-AbCdEf",
)
