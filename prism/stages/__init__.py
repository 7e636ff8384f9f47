"""Built-in stages. Each module registers its stage; ``registry()`` imports every module of this
package, so a new stage is one new file (re-export it here to make it part of the public API)."""

from prism.stages.audio import AudioStage
from prism.stages.base import ModelInfo, Stage, StageContext, StageResult, register, registry, resolve_order
from prism.stages.cues import CuesStage
from prism.stages.embeddings import EmbeddingsStage
from prism.stages.keyframes import KeyframesStage
from prism.stages.shots import ShotsStage

__all__ = [
    "AudioStage",
    "CuesStage",
    "EmbeddingsStage",
    "KeyframesStage",
    "ModelInfo",
    "ShotsStage",
    "Stage",
    "StageContext",
    "StageResult",
    "register",
    "registry",
    "resolve_order",
]
