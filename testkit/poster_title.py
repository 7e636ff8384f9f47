"""A title built from real photographs for the posters stage: faces, text cards, colour bars, blur, dark.

The photographs are scikit-image's (``skimage.data``: the astronaut Eileen Collins, the cameraman, coffee,
the cat Chelsea; public domain or CC0 per skimage's README). Each shot is one photograph composed on a
640x360 frame and panned slowly (a still would be a frozen cue). The truth lists, per shot, its kind,
time span and the faces' boxes in fractions of the frame (the photographs' known face boxes, moved
with the composition and the pan).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

W, H, FPS, PAN = 640, 360, 25, 120  # the picture is PAN pixels wider than the frame and pans across it
SHOT_S = 1.6
# face boxes (x0, y0, x1, y1) in the photographs' own pixels, checked by eye and by two detectors
FACE_BOXES = {"astronaut": (178, 63, 267, 175), "camera": (195, 113, 255, 193)}
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@dataclass(frozen=True)
class PosterShot:
    name: str
    kind: str  # face | noface | text | bars | blur | dark | black
    start_s: float
    end_s: float
    faces: tuple[tuple[float, float, float, float], ...]  # at the shot's first frame, fractions of the frame

    def faces_at(self, t: float) -> tuple[tuple[float, float, float, float], ...]:
        """The faces at title time ``t`` (the pan moves them left by PAN over the shot)."""
        dx = PAN / W * min(max(0.0, t - self.start_s), SHOT_S) / SHOT_S
        return tuple((a - dx, b, c - dx, d) for a, b, c, d in self.faces)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def _compose(name: str, face_h: int, fx: float) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """``name`` scaled so its face is ``face_h`` px tall, on a (W+PAN)xH canvas with the face's centre at ``fx`` of it."""
    from PIL import Image

    img, (a, b, c, d) = _photo(name), FACE_BOXES[name]
    s = face_h / (d - b)
    sw, sh = round(img.shape[1] * s), round(img.shape[0] * s)
    canvas = np.full((H, W + PAN, 3), 40, np.uint8)
    x = round(fx * (W + PAN) - (a + c) / 2 * s)
    y = round(H * 0.42 - (b + d) / 2 * s)
    scaled = np.asarray(Image.fromarray(img).resize((sw, sh), Image.Resampling.LANCZOS))
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W + PAN, x + sw), min(H, y + sh)
    canvas[y0:y1, x0:x1] = scaled[y0 - y : y1 - y, x0 - x : x1 - x]
    return canvas, (x + a * s, y + b * s, x + c * s, y + d * s)


def _card(lines: list[str], base: np.ndarray | None = None, bottom: bool = False) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(base if base is not None else np.full((H, W + PAN, 3), 12, np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 30)
    y = H - 30 - 40 * len(lines) if bottom else 90
    for line in lines:
        draw.text((60, y), line, font=font, fill=(240, 240, 240), stroke_width=2, stroke_fill=(0, 0, 0))
        y += 44
    return np.asarray(img)


def _filler(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(_photo(name)).resize((W + PAN, H), Image.Resampling.LANCZOS))


def build_poster_title(out: str | Path) -> list[PosterShot]:
    """Render the title to ``out`` (H.264 MP4 with a tone) and return its shots' truth."""
    from PIL import Image
    from scipy import ndimage

    from prism.media.tools import ffmpeg_exe

    out = Path(out)
    work = out.parent / f"{out.stem}-frames"
    work.mkdir(parents=True, exist_ok=True)
    astro, astro_face = _compose("astronaut", 150, 0.5)
    cam, cam_face = _compose("camera", 120, 0.62)
    astro_small, astro_small_face = _compose("astronaut", 70, 0.3)
    blurred = ndimage.gaussian_filter(cam.astype(np.float32), (4, 4, 0)).clip(0, 255).astype(np.uint8)
    dark = (astro_small.astype(np.float32) * 0.08).astype(np.uint8)
    plan: list[tuple[str, str, np.ndarray | None, tuple[float, float, float, float] | None]] = [
        ("bars", "bars", None, None),
        ("slate", "text", _card(["PRISM PICTURES", "SLATE 12  TAKE 3", "ROLL A007  2026-12-06"]), None),
        ("astronaut", "face", astro, astro_face),
        ("coffee", "noface", _filler("coffee"), None),
        ("subtitled", "text", _card(["I never said she stole my money."], astro, bottom=True), None),
        ("camera-blur", "blur", blurred, None),
        ("camera", "face", cam, cam_face),
        ("dark", "dark", dark, None),
        ("chelsea", "noface", _filler("chelsea"), None),
        ("astronaut-wide", "face", astro_small, astro_small_face),
        (
            "credits",
            "text",
            _card(["Directed by  KIM JI-WOO", "Produced by  ALEX MORGAN", "Music  LEE SEO-YEON"]),
            None,
        ),
    ]
    inputs: list[str] = []
    graph: list[str] = []
    shots: list[PosterShot] = []
    t = 0.0
    for i, (name, kind, pic, face) in enumerate(plan):
        if pic is None:
            inputs += ["-f", "lavfi", "-t", f"{SHOT_S}", "-i", f"smptehdbars=size={W}x{H}:rate={FPS}"]
            graph.append(f"[{i}:v]format=yuv420p,setsar=1[v{i}]")
        else:
            png = work / f"{i:02d}-{name}.png"
            Image.fromarray(pic).save(png)
            inputs += ["-loop", "1", "-framerate", str(FPS), "-t", f"{SHOT_S}", "-i", str(png)]
            graph.append(f"[{i}:v]crop={W}:{H}:x='t*{PAN / SHOT_S:.3f}':y=0,format=yuv420p,setsar=1[v{i}]")
        faces: tuple[tuple[float, float, float, float], ...] = ()
        if face is not None:
            faces = ((face[0] / W, face[1] / H, face[2] / W, face[3] / H),)
        shots.append(PosterShot(name, kind, t, t + SHOT_S, faces))
        t += SHOT_S
    n = len(plan)
    graph.append("".join(f"[v{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v]")
    inputs += ["-f", "lavfi", "-t", f"{t}", "-i", "sine=frequency=440:sample_rate=48000"]
    cmd = [
        ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex", ";".join(graph),
        "-map", "[v]", "-map", f"{n}:a", "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-g", "25",
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return shots
