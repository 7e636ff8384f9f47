"""No-reference picture quality of one frame: sharpness, exposure, noise, motion blur and BRISQUE.

Every measure is taken on the frame scaled to a fixed height (``WORK_HEIGHT``) so titles of any
resolution score alike. BRISQUE (the ``brisque`` package, whose SVM model ships in its wheel) is
the costliest part (~0.1 s a frame); callers ask for it on a short list only. Checked against
degraded copies of real photographs in tests/vision/test_quality.py.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

WORK_HEIGHT = 360


@dataclass(frozen=True)
class FrameQuality:
    sharpness: float  # variance of the Laplacian of the luma (0..255 levels) at WORK_HEIGHT
    exposure: float  # 0..1: mid-grey mean, nothing crushed or blown out
    noise_sigma: float  # estimated Gaussian noise (wavelet MAD, 0..255 levels)
    motion_blur: float  # 0..1: how much weaker the gradients are along one direction than across it
    brisque: float  # BRISQUE score, lower is better (~0..100); NaN when not measured

    def parts(self) -> dict[str, float]:
        """Each measure mapped to 0..1 (1 = best)."""
        out = {
            "sharpness": float(np.clip(math.log10(1.0 + self.sharpness) / 3.0, 0.0, 1.0)),
            "exposure": self.exposure,
            "noise": float(np.clip(1.0 - self.noise_sigma / 5.0, 0.0, 1.0)),
            "motion": float(np.clip(1.0 - max(0.0, self.motion_blur - 0.5) / 0.4, 0.0, 1.0)),
        }
        if not math.isnan(self.brisque):
            out["brisque"] = float(np.clip(1.0 - self.brisque / 80.0, 0.0, 1.0))
        return out

    def score(self) -> float:
        """Weighted mean of :meth:`parts` in 0..1 (BRISQUE's weight spread over the rest when not measured)."""
        weights = {"sharpness": 0.35, "exposure": 0.2, "noise": 0.15, "motion": 0.1, "brisque": 0.2}
        parts = self.parts()
        total = sum(weights[k] for k in parts)
        return float(sum(weights[k] * v for k, v in parts.items()) / total)


def to_work_size(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` scaled to WORK_HEIGHT rows (aspect kept)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if h == WORK_HEIGHT:
        return rgb
    size = (max(8, round(w * WORK_HEIGHT / h)), WORK_HEIGHT)
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def exposure_score(y: np.ndarray) -> float:
    crushed, blown = float((y < 5).mean()), float((y > 250).mean())
    centred = float(np.clip(1.0 - abs(float(y.mean()) - 118.0) / 118.0, 0.0, 1.0))
    return centred * float(np.clip(1.0 - crushed - blown, 0.0, 1.0))


def motion_blur(y: np.ndarray) -> float:
    """1 - (weakest / strongest) mean squared gradient over four directions (0, 45, 90, 135 degrees).

    A camera or subject moving during the exposure smears the picture along one direction, so the
    gradient along it collapses while the one across it stays; defocus weakens all four alike.
    """
    energies = [
        float(np.mean(np.square(y[:, 1:] - y[:, :-1]))),
        float(np.mean(np.square(y[1:, :] - y[:-1, :]))),
        float(np.mean(np.square(y[1:, 1:] - y[:-1, :-1]))) / 2.0,
        float(np.mean(np.square(y[1:, :-1] - y[:-1, 1:]))) / 2.0,
    ]
    strongest = max(energies)
    return 0.0 if strongest <= 1e-6 else float(1.0 - min(energies) / strongest)


@functools.lru_cache(maxsize=1)
def _brisque_model():
    from brisque import BRISQUE

    return BRISQUE(url=False)


def brisque_score(rgb: np.ndarray) -> float:
    """BRISQUE of an RGB frame (any size; scored at WORK_HEIGHT). NaN for a flat frame it cannot score."""
    import warnings

    work = to_work_size(rgb)
    if float(luma(work).std()) < 1.0:
        return float("nan")
    import cv2
    from skimage.color import rgb2gray

    model = _brisque_model()
    gray = rgb2gray(work)
    half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        # BRISQUE.score() as brisque 0.2.0 writes it, less its float() of 1-element arrays that numpy >= 2.4 refuses
        raw = np.concatenate(
            (model.calculate_brisque_features(gray, 7, 7 / 6), model.calculate_brisque_features(half, 7, 7 / 6))
        )
        features = np.array([np.asarray(f, dtype=np.float64).reshape(-1)[0] for f in raw])
        if not np.isfinite(features).all():
            return float("nan")
        value = float(model.calculate_image_quality_score(features))
    return value if math.isfinite(value) else float("nan")


def measure(rgb: np.ndarray, *, with_brisque: bool = True) -> FrameQuality:
    """Quality of one RGB uint8 frame (H, W, 3)."""
    from scipy import ndimage
    from skimage.restoration import estimate_sigma

    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {rgb.shape}")
    work = to_work_size(rgb)
    y = luma(work)
    sharp = float(ndimage.laplace(y).var())
    sigma = float(estimate_sigma(y, channel_axis=None))
    return FrameQuality(
        sharpness=sharp,
        exposure=exposure_score(y),
        noise_sigma=sigma if math.isfinite(sigma) else 0.0,
        motion_blur=motion_blur(y),
        brisque=brisque_score(work) if with_brisque else float("nan"),
    )
