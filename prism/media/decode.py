"""One decode pass per title for all visual analysis, a cheap audio decode, and keyframe seeks.

The visual pass runs a single ffmpeg process whose filter graph splits every decoded frame into
the 48x27 RGB frame TransNetV2 takes and a 128x72 analysis frame, stacked into one raw output so
one pipe carries both. The 48x27 frames go to a memory-mapped file (bounded memory for 2 h+
titles); the analysis frames are reduced on the fly to per-frame measurements (luma, darkness,
clipping, sharpness, change from the previous frame, a 16x9 thumbnail) and then dropped.
Frame times come from the same pass (``showinfo``), so variable frame rate needs no second read.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from prism.errors import MediaError
from prism.media.probe import MediaInfo
from prism.media.tools import ffmpeg_exe

SMALL_W, SMALL_H = 48, 27  # TransNetV2's input size
ANALYSIS_W, ANALYSIS_H = 128, 72
THUMB_W, THUMB_H = 16, 9
BLACK_PIXEL_LUMA = 0.10 * 255  # ffmpeg blackdetect's default pixel threshold
CHUNK_FRAMES = 256

Progress = Callable[[int, int | None], None]

_PTS_TIME = re.compile(rb"\bn:\s*\d+\s+pts:\s*-?\d+\s+pts_time:(-?[\d.]+)")


@dataclass
class VisualPass:
    """Everything the visual stages need from one decode of a title."""

    frames_small: np.ndarray  # (N, 27, 48, 3) uint8, memory-mapped
    times: np.ndarray  # (N,) float64 presentation time of each frame, seconds
    luma_mean: np.ndarray  # (N,) float32, 0..255
    luma_std: np.ndarray  # (N,) float32, contrast
    dark_ratio: np.ndarray  # (N,) share of pixels darker than 10 % (blackdetect's pixel threshold)
    clip_low: np.ndarray  # (N,) share of pixels crushed to black (< 5)
    clip_high: np.ndarray  # (N,) share of pixels blown out (> 250)
    sharpness: np.ndarray  # (N,) variance of the Laplacian of the analysis frame
    diff_prev: np.ndarray  # (N,) mean absolute luma change from the previous frame (0 for the first)
    thumbs: np.ndarray  # (N, 9, 16) uint8 luma thumbnails for near-duplicate checks
    fps: float  # average rate over the decoded frames
    duration_s: float

    @property
    def frame_count(self) -> int:
        return int(self.times.shape[0])

    @property
    def variable_frame_rate(self) -> bool:
        if self.frame_count < 3:
            return False
        steps = np.diff(self.times)
        return bool(steps.std() > 0.05 * max(steps.mean(), 1e-9))

    def end_time(self, frame: int) -> float:
        """Time at which exclusive end ``frame`` begins (the title's end for the last frame)."""
        if frame < self.frame_count:
            return float(self.times[frame])
        return float(max(self.duration_s, self.times[-1] + 1.0 / self.fps if self.frame_count else 0.0))


def _frame_features(luma: np.ndarray, previous: np.ndarray | None) -> dict[str, np.ndarray]:
    lap = (
        4.0 * luma[:, 1:-1, 1:-1]
        - luma[:, :-2, 1:-1]
        - luma[:, 2:, 1:-1]
        - luma[:, 1:-1, :-2]
        - luma[:, 1:-1, 2:]
    )
    shifted = np.concatenate([luma[:1] if previous is None else previous[None], luma[:-1]])
    n = luma.shape[0]
    thumbs = luma.reshape(n, THUMB_H, ANALYSIS_H // THUMB_H, THUMB_W, ANALYSIS_W // THUMB_W).mean(axis=(2, 4))
    return {
        "luma_mean": luma.mean(axis=(1, 2)),
        "luma_std": luma.std(axis=(1, 2)),
        "dark_ratio": (luma < BLACK_PIXEL_LUMA).mean(axis=(1, 2)),
        "clip_low": (luma < 5).mean(axis=(1, 2)),
        "clip_high": (luma > 250).mean(axis=(1, 2)),
        "sharpness": lap.reshape(n, -1).var(axis=1),
        "diff_prev": np.abs(luma - shifted).mean(axis=(1, 2)),
        "thumbs": np.clip(np.rint(thumbs), 0, 255).astype(np.uint8),
    }


def _visual_pass_command(path: Path) -> list[str]:
    """ffmpeg command line of the visual pass: one decode split into the two stacked sizes."""
    import ffmpeg

    hwaccel = os.environ.get("PRISM_HWACCEL")  # e.g. "cuda" in the GPU workers: NVDEC decodes, frames come back to RAM
    options = {"hwaccel": hwaccel} if hwaccel else {}
    frames = ffmpeg.input(str(path), nostdin=None, **options).video.filter("showinfo").split()
    analysis = frames[0].filter("scale", ANALYSIS_W, ANALYSIS_H, flags="area").filter("format", "rgb24")
    small = (
        frames[1]
        .filter("scale", SMALL_W, SMALL_H)
        .filter("format", "rgb24")
        .filter("pad", ANALYSIS_W, SMALL_H)
    )
    stacked = ffmpeg.filter([analysis, small], "vstack", inputs=2)
    output = stacked.output("pipe:1", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", an=None, sn=None, dn=None)
    return output.global_args("-hide_banner", "-loglevel", "info").compile(cmd=ffmpeg_exe())


def decode_visual(
    path: str | Path, info: MediaInfo, work_dir: str | Path, progress: Progress | None = None
) -> VisualPass:
    """Decode the first video stream once; see the module docstring. Raises MediaError."""
    path = Path(path)
    if info.video is None:
        raise MediaError(path, "no video stream (audio-only input)")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    small_file = work_dir / "frames_48x27_rgb.u8"
    proc = subprocess.Popen(_visual_pass_command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    times: list[float] = []
    tail: deque[bytes] = deque(maxlen=8)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            match = _PTS_TIME.search(line)
            if match:
                times.append(float(match[1]))
            else:
                tail.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    row_bytes = ANALYSIS_W * 3
    frame_bytes = row_bytes * (ANALYSIS_H + SMALL_H)
    features: dict[str, list[np.ndarray]] = {}
    previous = None
    count = 0
    total = info.video.frame_count or (int(info.duration_s * info.video.fps) or None)
    assert proc.stdout is not None
    with open(small_file, "wb") as small_out:
        while True:
            buf = proc.stdout.read(frame_bytes * CHUNK_FRAMES)
            n = len(buf) // frame_bytes
            if n == 0:
                break
            frames = np.frombuffer(buf, np.uint8, count=n * frame_bytes).reshape(n, ANALYSIS_H + SMALL_H, ANALYSIS_W, 3)
            small_out.write(np.ascontiguousarray(frames[:, ANALYSIS_H:, :SMALL_W]).tobytes())
            rgb = frames[:, :ANALYSIS_H].astype(np.float32)
            luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
            for key, value in _frame_features(luma, previous).items():
                features.setdefault(key, []).append(value)
            previous = luma[-1]
            count += n
            if progress:
                progress(count, total)
    returncode = proc.wait()
    reader.join()
    if count == 0:
        reason = _stderr_reason(tail) if returncode else "no video frame could be decoded"
        raise MediaError(path, f"video decode failed: {reason}")
    if returncode != 0:
        raise MediaError(path, f"video decode failed after {count} frames: {_stderr_reason(tail)}")
    frame_times = np.asarray(times[:count], dtype=np.float64)
    if frame_times.shape[0] != count:  # showinfo lost: fall back to the average rate
        frame_times = np.arange(count, dtype=np.float64) / (info.video.fps or 25.0)
    span = float(frame_times[-1] - frame_times[0]) if count > 1 else 0.0
    fps = (count - 1) / span if span > 0 else (info.video.fps or 25.0)
    small = np.memmap(small_file, dtype=np.uint8, mode="r", shape=(count, SMALL_H, SMALL_W, 3))
    merged = {key: np.concatenate(parts) for key, parts in features.items()}
    return VisualPass(
        frames_small=small,
        times=frame_times,
        fps=fps,
        duration_s=max(info.duration_s, float(frame_times[-1]) + 1.0 / fps),
        **{k: v.astype(np.float32) if k != "thumbs" else v for k, v in merged.items()},
    )


def _stderr_reason(tail: Iterable[bytes]) -> str:
    lines = [line.decode("utf-8", "replace").strip() for line in tail if line.strip()]
    return lines[-1] if lines else "ffmpeg exited with an error"


@dataclass
class AudioPCM:
    """One audio track decoded to mono float32 at a fixed rate."""

    samples: np.ndarray  # (S,) float32 in [-1, 1]
    sample_rate: int
    track: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def audio_blocks(
    path: str | Path, track: int = 0, sample_rate: int = 16000, channels: int = 1, block_s: float = 60.0
) -> Iterator[np.ndarray]:
    """Stream audio track ``track`` (0:a:N) as float32 blocks of ``block_s`` seconds (bounded memory).

    Blocks are (samples,) for mono and (samples, channels) otherwise; every block but the last
    holds a whole number of 10 ms windows. Raises MediaError when nothing can be decoded.
    """
    path = Path(path)
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
        "-map", f"0:a:{track}", "-vn", "-sn", "-dn", "-ac", str(channels), "-ar", str(sample_rate),
        "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail: deque[bytes] = deque(maxlen=8)
    reader = threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True)
    reader.start()
    frame_bytes = 4 * channels
    block_bytes = max(1, int(block_s * 100)) * (sample_rate // 100) * frame_bytes
    total = 0
    assert proc.stdout is not None
    try:
        while buf := proc.stdout.read(block_bytes):
            usable = len(buf) - len(buf) % frame_bytes
            block = np.frombuffer(buf[:usable], np.float32)
            total += block.size
            yield block if channels == 1 else block.reshape(-1, channels)
    finally:
        proc.stdout.close()
        returncode = proc.wait()
        reader.join()
    if returncode != 0 or total == 0:
        reason = _stderr_reason(tail) if returncode else "no audio sample decoded"
        raise MediaError(path, f"audio track {track} decode failed: {reason}")


def decode_audio(
    path: str | Path, track: int = 0, sample_rate: int = 16000, channels: int = 1
) -> AudioPCM:
    """Decode a whole audio track to float32 PCM, down-mixed to ``channels`` (short media only)."""
    data = np.concatenate(list(audio_blocks(path, track, sample_rate, channels)))
    return AudioPCM(samples=data, sample_rate=sample_rate, track=track)


def extract_frame(path: str | Path, time_s: float, out_file: str | Path, fps: float, quality: int = 2) -> None:
    """Write the full-resolution frame shown at ``time_s`` as JPEG, by seeking (no full decode)."""
    seek = max(0.0, time_s - 0.25 / max(fps, 1.0))
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-ss", f"{seek:.6f}",
        "-i", str(path), "-map", "0:v:0", "-frames:v", "1", "-q:v", str(quality), "-y", str(out_file),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or not Path(out_file).exists():
        raise MediaError(path, f"could not extract frame at {time_s:.3f}s: {_stderr_reason(proc.stderr.splitlines()[-8:])}")


def extract_frames(
    path: str | Path,
    requests: list[tuple[float, Path]],
    fps: float,
    workers: int = 4,
    on_done: Callable[[Path], None] | None = None,
) -> None:
    """Seek and write several frames concurrently (each seek decodes one GOP at most)."""

    def one(req: tuple[float, Path]) -> None:
        extract_frame(path, req[0], req[1], fps)
        if on_done:
            on_done(req[1])

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, requests))
