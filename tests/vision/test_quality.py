"""Picture quality measures against degraded copies of real photographs (scikit-image's)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from scipy import ndimage

from prism.vision.quality import measure

PHOTOS = ["astronaut", "coffee", "chelsea"]


def _degraded(name: str) -> dict[str, np.ndarray]:
    img = np.asarray(getattr(skimage.data, name)())[..., :3].astype(np.float32)
    rng = np.random.default_rng(0)
    line = np.zeros((1, 21, 1), np.float32)
    line[0, :, 0] = 1 / 21
    out = {
        "original": img,
        "defocus": ndimage.gaussian_filter(img, (3, 3, 0)),
        "noise": img + rng.normal(0, 20, img.shape),
        "dark": img * 0.2,
        "motion": ndimage.convolve(img, line),  # a 21-pixel horizontal smear
    }
    return {k: np.clip(v, 0, 255).astype(np.uint8) for k, v in out.items()}


@pytest.fixture(scope="module", params=PHOTOS)
def scored(request):
    return {k: measure(v) for k, v in _degraded(request.param).items()}


def test_defocus_loses_sharpness_and_brisque_sees_it(scored):
    orig, blur = scored["original"], scored["defocus"]
    assert blur.sharpness < orig.sharpness / 10
    assert blur.brisque > orig.brisque + 20
    assert blur.score() < orig.score() - 0.15


def test_noise_is_estimated(scored):
    assert scored["noise"].noise_sigma > 3 * scored["original"].noise_sigma
    assert scored["noise"].parts()["noise"] < scored["original"].parts()["noise"] - 0.4


def test_underexposure_scores_low(scored):
    assert scored["dark"].exposure < 0.3 < 0.7 < scored["original"].exposure
    assert scored["dark"].score() < scored["original"].score() - 0.15


def test_motion_blur_is_directional(scored):
    orig, motion, blur = scored["original"], scored["motion"], scored["defocus"]
    assert motion.motion_blur > orig.motion_blur + 0.25
    assert motion.motion_blur > blur.motion_blur + 0.2  # defocus weakens every direction alike
    assert motion.score() < orig.score() - 0.15


def test_brisque_can_be_left_out_and_flat_frames_score_without_it():
    img = _degraded("coffee")["original"]
    assert np.isnan(measure(img, with_brisque=False).brisque)
    flat = measure(np.full((90, 160, 3), 128, np.uint8))
    assert np.isnan(flat.brisque) and flat.sharpness == 0.0 and 0.0 <= flat.score() <= 1.0
