"""Titles cut from real photographs (scikit-image's shipped images) with exact ground truth.

Each shot is a virtual camera moving over one photograph (a pan and a zoom, with sensor grain),
so shots hold real image statistics — textures, faces, skies — rather than ffmpeg's test
patterns. Shots are joined by hard cuts, long dissolves, fades through black, or cut into fast
montages of 2-10-frame shots, and every transition's frames are known exactly.

The photographs ship inside the scikit-image wheel (no download). Two disjoint groups of them
(``TUNE_PHOTOS`` and ``HELD_OUT_PHOTOS``) keep tuning and reporting apart.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism.media.tools import ffmpeg_exe
from prism.synth import Truth

# Photographs that ship in the scikit-image wheel (skimage/data/*.png|jpg), split in two groups.
TUNE_PHOTOS = ("astronaut", "coffee", "rocket", "camera", "moon", "grass", "brick", "motorcycle_left")
HELD_OUT_PHOTOS = ("chelsea", "hubble_deep_field", "retina", "coins", "page", "gravel", "ihc", "cell")


@functools.lru_cache(maxsize=32)
def photo(name: str) -> np.ndarray:
    """An RGB uint8 photograph shipped in the scikit-image wheel (``skimage/data/<name>.png|jpg``)."""
    import cv2
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    [path] = [p for p in (folder / f"{name}.png", folder / f"{name}.jpg") if p.exists()]
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[:, :, ::-1])


@dataclass(frozen=True)
class PhotoShot:
    """``frames`` of a camera moving over ``photo``: the crop's centre pans by ``pan`` (fractions of
    the photo's size) and its width scales from ``zoom[0]`` to ``zoom[1]`` of the largest 16:9 crop."""

    photo: str
    frames: int
    transition_in: str = "cut"  # cut | dissolve | fade (ignored for the first shot)
    transition_frames: int = 0  # dissolve: frames blending both shots; fade: frames out plus frames in
    pan: tuple[float, float] = (0.1, 0.0)
    zoom: tuple[float, float] = (0.8, 0.7)
    centre: tuple[float, float] = (0.5, 0.5)


def _render_shot(shot: PhotoShot, count: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    img = photo(shot.photo)
    ph, pw = img.shape[:2]
    full_w = min(pw, ph * width / height)
    out = np.empty((count, height, width, 3), np.uint8)
    for k in range(count):
        t = k / max(count - 1, 1)
        crop_w = full_w * (shot.zoom[0] + (shot.zoom[1] - shot.zoom[0]) * t)
        crop_h = crop_w * height / width
        cx = pw * (shot.centre[0] + shot.pan[0] * (t - 0.5))
        cy = ph * (shot.centre[1] + shot.pan[1] * (t - 0.5))
        cx = min(max(cx, crop_w / 2), pw - crop_w / 2)
        cy = min(max(cy, crop_h / 2), ph - crop_h / 2)
        s = crop_w / width
        m = np.array([[s, 0.0, cx - crop_w / 2], [0.0, s, cy - crop_h / 2]], np.float32)
        frame = cv2.warpAffine(img, m, (width, height), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP)
        grain = rng.normal(0.0, 2.0, frame.shape)
        out[k] = np.clip(frame + grain, 0, 255).astype(np.uint8)
    return out


def render(shots: list[PhotoShot], width: int = 320, height: int = 180, seed: int = 0) -> tuple[np.ndarray, Truth]:
    """All frames of the title and its truth (cuts: first frame of the new shot; gradual: [start, end))."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    cuts: list[int] = []
    gradual: list[tuple[int, int]] = []
    total = 0
    for i, shot in enumerate(shots):
        overlap = shot.transition_frames if i and shot.transition_in == "dissolve" else 0
        frames = _render_shot(shot, shot.frames + overlap, width, height, rng)
        if i == 0 or shot.transition_in == "cut":
            if i:
                cuts.append(total)
            parts.append(frames)
            total += len(frames)
        elif shot.transition_in == "dissolve":
            prev = parts[-1]
            if len(prev) <= overlap:
                raise ValueError(f"shot {i - 1} ({len(prev)} frames) is shorter than the dissolve after it")
            tail, head = prev[-overlap:].astype(np.float32), frames[:overlap].astype(np.float32)
            alpha = (np.arange(1, overlap + 1, dtype=np.float32) / (overlap + 1))[:, None, None, None]
            parts[-1] = prev[:-overlap]
            parts.append(np.round(tail * (1 - alpha) + head * alpha).astype(np.uint8))
            parts.append(frames[overlap:])
            gradual.append((total - overlap, total))
            total += shot.frames
        elif shot.transition_in == "fade":
            n_out = shot.transition_frames // 2
            n_in = shot.transition_frames - n_out
            prev = parts[-1]
            down = (1 - np.arange(1, n_out + 1, dtype=np.float32) / (n_out + 1))[:, None, None, None]
            up = (np.arange(1, n_in + 1, dtype=np.float32) / (n_in + 1))[:, None, None, None]
            parts[-1] = np.concatenate([prev[:-n_out], np.round(prev[-n_out:] * down).astype(np.uint8)])
            parts.append(np.concatenate([np.round(frames[:n_in] * up).astype(np.uint8), frames[n_in:]]))
            gradual.append((total - n_out, total + n_in))
            total += shot.frames
        else:
            raise ValueError(f"unknown transition {shot.transition_in!r}")
    video = np.concatenate(parts)
    assert len(video) == total
    return video, Truth(cuts=cuts, gradual=gradual, black=[], frozen=[], frame_count=total, fps=25.0)


def write_video(frames: np.ndarray, out: str | Path, fps: float = 25.0) -> Path:
    """Encode RGB frames with x264 (yuv420p, crf 18), as a delivered title would be."""
    out = Path(out)
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
           "-g", "50", "-pix_fmt", "yuv420p", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"ffmpeg could not write {out}: {proc.stderr.decode(errors='replace')[-1000:]}")
    return out


def build_photo_title(shots: list[PhotoShot], out: str | Path, *, width: int = 320, height: int = 180,
                      seed: int = 0) -> Truth:  # fmt: skip
    frames, truth = render(shots, width, height, seed)
    write_video(frames, out)
    return truth


def _motion(rng: np.random.Generator, fast: bool = False) -> dict:
    speed = 0.5 if fast else 0.15
    z0 = rng.uniform(0.55, 0.9)
    return {
        "pan": (float(rng.uniform(-speed, speed)), float(rng.uniform(-speed, speed) / 2)),
        "zoom": (z0, float(z0 * rng.uniform(0.75, 1.25 if not fast else 1.0))),
        "centre": (float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.4, 0.6))),
    }


def _pick(rng: np.random.Generator, photos: tuple[str, ...], last: str | None) -> str:
    return str(rng.choice([p for p in photos if p != last]))


def evaluation_titles(photos: tuple[str, ...], seed: int) -> dict[str, list[PhotoShot]]:
    """Four titles over ``photos``: long dissolves (20-60 frames), fades through black, fast montages
    (shots of 2-10 frames between ordinary shots) and hard cuts between moving shots, with fast
    pans and zooms that are no transition at all."""
    rng = np.random.default_rng(seed)
    titles: dict[str, list[PhotoShot]] = {}
    last: str | None = None

    def shot(frames: int, transition: str = "cut", n: int = 0, fast: bool = False) -> PhotoShot:
        nonlocal last
        last = _pick(rng, photos, last)
        return PhotoShot(last, frames, transition, n, **_motion(rng, fast))

    overlaps = [int(rng.integers(20, 61)) for _ in range(8)] + [0]
    dissolves = [shot(overlaps[0] + 20)]  # each shot outlasts the dissolve that ends it
    for k in range(8):
        dissolves.append(shot(overlaps[k + 1] + int(rng.integers(15, 35)), "dissolve", overlaps[k]))
    titles["dissolves"] = dissolves
    titles["fades"] = [shot(40)] + [shot(int(rng.integers(35, 50)), "fade", int(rng.integers(16, 41)))
                                    for _ in range(4)]  # fmt: skip
    montage = [shot(40)]
    for _ in range(3):
        montage += [shot(int(rng.integers(2, 11))) for _ in range(int(rng.integers(5, 9)))]
        montage.append(shot(int(rng.integers(30, 45))))
    titles["montage"] = montage
    titles["cuts_motion"] = [shot(int(rng.integers(30, 60)), fast=bool(k % 2)) for k in range(10)]
    return titles
