"""The shared text detector finds rendered lines where they are drawn, and nothing on a plain or photo-like frame."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from prism.vision.text import TextDetector, load_text_detector, model_identity

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _card(lines: list[tuple[int, int, str]], size=(1280, 720)) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    bg = np.stack([xx * 80 // size[0], yy * 90 // size[1], np.full_like(xx, 70)], -1) + rng.integers(
        0, 12, (size[1], size[0], 3)
    )
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 40)
    for x, y, text in lines:
        draw.text((x, y), text, font=font, fill=(255, 255, 255))
    return np.asarray(img)


def test_lines_found_where_drawn_and_bottom_band_separates_subtitles():
    frame = _card([(400, 100, "DIRECTED BY SOMEONE"), (200, 600, "Subtitles at the bottom here")])
    det = load_text_detector(limit_side_len=360).detect(frame)
    assert len(det.boxes) == 2
    top, bottom = det.boxes
    assert top.y0 == pytest.approx(100 / 720, abs=0.03) and top.x0 == pytest.approx(400 / 1280, abs=0.03)
    assert bottom.y0 == pytest.approx(600 / 720, abs=0.03)
    assert all(b.score > 0.6 for b in det.boxes)
    assert det.in_band(0.75, 1.0) == (bottom,)
    assert 0.02 < det.coverage() < 0.15
    assert det.coverage(0.75, 1.0) > det.coverage(0.3, 0.75) == 0.0


def test_no_text_on_a_plain_or_textured_frame():
    det = load_text_detector(limit_side_len=360)
    assert det.detect(np.full((720, 1280, 3), 128, np.uint8)).boxes == ()
    assert det.detect(_card([])).boxes == ()


def test_bad_input_and_settings_are_refused():
    with pytest.raises(ValueError, match="RGB"):
        load_text_detector(limit_side_len=360).detect(np.zeros((72, 128), np.uint8))
    with pytest.raises(ValueError, match="box_thresh"):
        TextDetector(box_thresh=1.5)
    assert model_identity().startswith("ppocr-v4-det@")
