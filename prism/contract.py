"""Names shared across process boundaries: the worker container, the Lambdas, the CDK app, the CLI.

Each side used to spell these on its own (``EXIT_TRANSIENT = "75"`` in the CDK, ``EXIT_FAILED = 1``
in ``record_failure``, ``"titles/"`` in three places); a rename on one side broke the others only
in production. This module is the one place, imports only the standard library, and ships in the
Lambda bundle (``cdk/lambda_bundle.py``).
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """How a stage ended, as the manifest, the catalog and the events spell it.

    ``blocked``: not run because a stage it requires did not succeed (the title fails).
    ``stale``: its record is kept, but a stage it requires has since changed, so its outputs
    no longer follow from its inputs; the next run of it redoes it.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    BLOCKED = "blocked"
    STALE = "stale"

    def __str__(self) -> str:
        return self.value


# -- the worker container's exit codes (the Batch retry strategy and record_failure read them) --
EXIT_OK = 0  # every stage succeeded or was up to date
EXIT_FAILED = 1  # a stage failed or was blocked; every stage the worker ran is recorded (not retried)
EXIT_CONFIG = 2  # bad configuration or a refusal a retry cannot change (not retried)
EXIT_TRANSIENT = 75  # transient AWS error (EX_TEMPFAIL): the job definition retries it
# The host, not the input: CUDA out of memory, NVDEC/driver initialisation, an Xid, a GPU stage that would fall
# back to the CPU, S3 uploads that failed, throttling inside a stage. The job definition retries it (Batch places
# the new attempt afresh, usually on another instance); bad media exits EXIT_FAILED and is not retried.
EXIT_INFRA = 76
RETRYABLE_EXIT_CODES = (EXIT_TRANSIENT, EXIT_INFRA)
REASON_LIMIT = 1024  # characters of a failure reason kept in the state and the catalog; the rest goes to the logs

WORKER_MODULE = "prism.cloud.worker"  # the container's command: python -m prism.cloud.worker
WORKER_COMMAND = ("python", "-m", WORKER_MODULE)

# -- S3 layout -------------------------------------------------------------------------------
TITLES_PREFIX = "titles/"  # titles/<title_id>/manifest.json and each stage's outputs
TABLES_PREFIX = "tables/"  # tables/<artifact>/<title_id>.parquet: each Parquet artifact across titles (prism.tables)
RUNS_PREFIX = "_prism/runs/"  # discover's run items and summarise's summaries

# -- names the stack gives its resources ---------------------------------------------------------
STACK_NAME = "Prism-{env}"  # one application stack per environment
EVENT_BUS = "prism-{env}"  # where finalize publishes its title events
EVENT_SOURCE = "prism"
TITLE_PREPROCESSED = "Title Preprocessed"
TITLE_FAILED = "Title Failed"

# -- PRISM_* environment: the worker container's (job definition + Step Functions overrides) -----
ENV_STAGES = "PRISM_STAGES"
ENV_JOB = "PRISM_JOB"
ENV_TITLE_ID = "PRISM_TITLE_ID"
ENV_SOURCE_URI = "PRISM_SOURCE_URI"
ENV_FORCE = "PRISM_FORCE"
ENV_PARAMS = "PRISM_PARAMS"
ENV_EXECUTION = "PRISM_EXECUTION"
ENV_REQUIRE_MODELS = "PRISM_REQUIRE_MODELS"
ENV_MODEL_LOCATION = "PRISM_MODEL_LOCATION"
ENV_MODEL_DIR = "PRISM_MODEL_DIR"
ENV_LANGUAGE_HINT = "PRISM_LANGUAGE_HINT"
ENV_REQUIRE_GPU = "PRISM_REQUIRE_GPU"  # a GPU job: a stage that would fall back to the CPU fails (EXIT_INFRA)
# ... set by the job definition, read by the stages
ENV_HWACCEL = "PRISM_HWACCEL"
ENV_EMBEDDINGS_MODEL = "PRISM_EMBEDDINGS_MODEL"
ENV_ASR_MODEL = "PRISM_ASR_MODEL"
ENV_SPEAKER_MODEL = (
    "PRISM_SPEAKER_MODEL"  # a pyannote pipeline directory for speaker turns (prism/audio/diarization.py)
)
ENV_OVERLAP_STAGES = "PRISM_OVERLAP_STAGES"  # 0: a title's stage groups run one after another (prism/schedule.py)
ENV_DECODE_CHUNKS = "PRISM_DECODE_CHUNKS"  # ranges of the chunked visual pass (prism/media/chunks.py); 1: one pass
# ... shared by the worker and the Lambdas
ENV_ARTIFACTS_BUCKET = "PRISM_ARTIFACTS_BUCKET"
ENV_CATALOG_TABLE = "PRISM_CATALOG_TABLE"
ENV_PIPELINE_VERSION = "PRISM_PIPELINE_VERSION"
# ... the Lambdas'
ENV_INPUT_BUCKET = "PRISM_INPUT_BUCKET"
ENV_INPUT_PREFIX = "PRISM_INPUT_PREFIX"
ENV_EVENT_BUS = "PRISM_EVENT_BUS"
ENV_STAGE_GRAPH = "PRISM_STAGE_GRAPH"
ENV_JOBS = "PRISM_JOBS"
ENV_JOB_QUEUES = "PRISM_JOB_QUEUES"
ENV_VIDEO_SUFFIXES = "PRISM_VIDEO_SUFFIXES"
ENV_WATERMARK_OVERLAP_S = "PRISM_WATERMARK_OVERLAP_S"
ENV_MAX_TITLES_PER_RUN = "PRISM_MAX_TITLES_PER_RUN"
ENV_DELIVERY = "PRISM_DELIVERY"  # the input layout (JSON of cdk.config.DeliveryLayout): title ids, renditions, ignores
ENV_MAX_ATTEMPTS = "PRISM_MAX_ATTEMPTS"  # scheduled runs that may take a failed title before it is parked
# -- CloudWatch metrics discover publishes (cdk/monitoring.py alarms on them) ----------------------
METRIC_TITLES_TAKEN = "TitlesTaken"
METRIC_TITLES_DEFERRED = "TitlesDeferred"
METRIC_TITLES_PARKED = "TitlesParked"


def bounded(reason: str, limit: int = REASON_LIMIT) -> str:
    """``reason`` cut to ``limit`` characters, saying how much was left out (the full text is logged)."""
    if len(reason) <= limit:
        return reason
    return reason[: limit - len(REASON_CUT)] + REASON_CUT


REASON_CUT = " ... [cut: the full reason is in the logs]"
