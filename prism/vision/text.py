"""Burnt-in text detection with PP-OCRv4's detector (ONNX weights shipped in rapidocr-onnxruntime, Apache-2.0).

One detector for every stage that asks "is there text in this frame, and where": QC (slates, credits,
subtitles) and poster candidates (text-free frames). Detection only; no recognition: the questions are
about where text is and how much of the frame it covers, in any script (Latin, Hangul, Han).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism.errors import ModelUnavailable

# PP-OCRv4 det's post-processing defaults (rapidocr's config.yaml); box_thresh is the detector's confidence floor.
_POST = {"thresh": 0.3, "max_candidates": 1000, "unclip_ratio": 1.6, "use_dilation": True, "score_mode": "fast"}


@dataclass(frozen=True)
class TextBox:
    """One text line, axis-aligned, in fractions of the frame (0..1), with the detector's confidence."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


@dataclass(frozen=True)
class TextDetection:
    boxes: tuple[TextBox, ...]

    def coverage(self, y0: float = 0.0, y1: float = 1.0) -> float:
        """Share of the band [y0, y1) of the frame covered by text boxes (overlaps counted once)."""
        if not self.boxes or y1 <= y0:
            return 0.0
        grid = np.zeros((100, 100), dtype=bool)
        for b in self.boxes:
            grid[int(b.y0 * 100) : max(int(b.y0 * 100) + 1, int(np.ceil(b.y1 * 100))), int(b.x0 * 100) : max(int(b.x0 * 100) + 1, int(np.ceil(b.x1 * 100)))] = True  # fmt: skip
        band = grid[int(y0 * 100) : max(int(y0 * 100) + 1, int(np.ceil(y1 * 100)))]
        return float(band.mean())

    def in_band(self, y0: float, y1: float) -> tuple[TextBox, ...]:
        """Boxes whose vertical centre lies in [y0, y1) (e.g. the bottom band where subtitles sit)."""
        return tuple(b for b in self.boxes if y0 <= (b.y0 + b.y1) / 2 < y1)


def _model_path() -> Path:
    try:
        import rapidocr_onnxruntime
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelUnavailable("text detector: rapidocr-onnxruntime is not installed") from exc
    path = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    if not path.is_file():
        raise ModelUnavailable(f"text detector: {path} is missing from the rapidocr-onnxruntime wheel")
    return path


@functools.lru_cache(maxsize=1)
def model_identity() -> str:
    """The detector's identity for stage fingerprints: its weights' digest."""
    with open(_model_path(), "rb") as fh:
        return "ppocr-v4-det@" + hashlib.file_digest(fh, "sha256").hexdigest()[:12]


class TextDetector:
    """PP-OCRv4 text detection on RGB frames; ``limit_side_len`` is the short side the detector sees."""

    def __init__(self, *, box_thresh: float = 0.5, limit_side_len: int = 736, threads: int = 1) -> None:
        if not 0.0 < box_thresh < 1.0:
            raise ValueError(f"box_thresh must be in (0, 1), got {box_thresh}")
        if limit_side_len < 32:
            raise ValueError(f"limit_side_len must be >= 32, got {limit_side_len}")
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
        from rapidocr_onnxruntime.utils import OrtInferSession

        self._pre = DetPreProcess(limit_side_len, "min", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
        self._post = DBPostProcess(box_thresh=box_thresh, **_POST)
        self._session = OrtInferSession(
            {
                "model_path": str(_model_path()),
                "use_cuda": False,
                "use_dml": False,
                "intra_op_num_threads": threads,
                "inter_op_num_threads": 1,
            }
        )

    def detect(self, rgb: np.ndarray) -> TextDetection:
        """Text lines in one RGB uint8 frame (H, W, 3)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB frame (H, W, 3), got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        tensor = self._pre(np.ascontiguousarray(rgb[:, :, ::-1]))  # the model was trained on BGR
        if tensor is None:
            return TextDetection(())
        pred = self._session(tensor)[0]
        polys, scores = self._post(pred, (h, w))
        boxes = []
        for poly, score in zip(polys, scores):
            xs, ys = np.clip(poly[:, 0], 0, w), np.clip(poly[:, 1], 0, h)
            if xs.max() - xs.min() <= 3 or ys.max() - ys.min() <= 3:
                continue
            boxes.append(
                TextBox(
                    float(xs.min() / w), float(ys.min() / h), float(xs.max() / w), float(ys.max() / h), float(score)
                )
            )
        boxes.sort(key=lambda b: (b.y0, b.x0))
        return TextDetection(tuple(boxes))


@functools.lru_cache(maxsize=4)
def load_text_detector(box_thresh: float = 0.5, limit_side_len: int = 736) -> TextDetector:
    """One detector per process and setting (ONNX session creation is the expensive part)."""
    return TextDetector(box_thresh=box_thresh, limit_side_len=limit_side_len)
