"""One decode pass per title for all visual analysis, a cheap audio decode, and keyframe seeks.

The visual pass runs a single ffmpeg process that scales every decoded frame once, straight
from the source to the 128x72 RGB analysis frame (area filter), and derives TransNetV2's 48x27
frame from that small frame; both are stacked into one raw output so one pipe carries both.
Frame times come from the same pass (``showinfo`` on the small frame, so no full-size frame is
checksummed), and variable frame rate needs no second read. A reader thread drains the pipe
while the main thread reduces each chunk of analysis frames to per-frame measurements (luma,
darkness, clipping, sharpness, change from the previous frame, a 16x9 thumbnail), so numpy work
overlaps decoding; the 48x27 frames go to a memory-mapped file (bounded memory for 2 h+ titles).

Long titles are decoded as several time ranges at once (:mod:`prism.media.chunks`): the same
command, seeking to a keyframe and trimmed to exact source timestamps, merged into the same
VisualPass. ``PRISM_DECODE_CHUNKS`` sets how many (1: always one process).

``PRISM_HWACCEL=cuda`` keeps the frames on the GPU: NVDEC decodes, ``scale_cuda`` halves them
there (a bilinear halving is an exact 2x2 average) down to about four times the analysis size,
and only that small frame is downloaded for the same CPU tail. Other values are passed to
``-hwaccel`` as they are (decoded frames come back to RAM).

Time convention (docs/artifacts.md): the title clock starts at the first decoded video frame.
The pass keeps each frame's source timestamp (``-copyts``: what the container stores, 1000 s
start offsets and MPEG-TS mux delays included) to seek keyframes with, and the title clock is
those timestamps minus the first one, with backward jumps (MPEG-TS discontinuities) closed up.
Durations are measured, never read from the container header, which can lie or be truncated.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from prism.errors import MediaError
from prism.media.probe import MediaInfo
from prism.media.tools import ffmpeg_exe, input_arg

log = logging.getLogger(__name__)

SMALL_W, SMALL_H = 48, 27  # TransNetV2's input size
ANALYSIS_W, ANALYSIS_H = 128, 72
THUMB_W, THUMB_H = 16, 9
BLACK_PIXEL_LUMA = 0.10 * 255  # ffmpeg blackdetect's default pixel threshold
CHUNK_FRAMES = 256
CHUNKS_AHEAD = 4  # chunks the reader thread may hold while a chunk is reduced (about 10 MB each)
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601 luma of the RGB analysis frame

Progress = Callable[[int, int | None], None]

_PTS_TIME = re.compile(rb"\bn:\s*\d+\s+pts:\s*(-?\d+)\s+pts_time:(-?[\d.e+-]+)")
_TIME_BASE = re.compile(rb"config in time_base:\s*(\d+)/(\d+)")
_SHOWN_SIZE = re.compile(rb"\bs:(\d+)x(\d+)")
DISCONTINUITY_S = 10.0  # a forward jump this large in MPEG-TS is a splice, not a gap (ffmpeg's dts_delta_threshold)
TRUNCATED_SHARE = 0.9  # decoded under this share of the declared duration (and 1 s short): flagged


class NoFrameDecoded(MediaError):
    """The visual pass ended before its first frame (a GPU pass then retries on the CPU)."""


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
    duration_s: float  # decoded: last frame's time plus one frame, never the container's claim
    source_times: np.ndarray | None = None  # (N,) float64 source timestamps (seek targets); None if unknown

    @property
    def origin_s(self) -> float:
        """Source timestamp of frame 0, the title's time zero (0.0 when unknown)."""
        return float(self.source_times[0]) if self.source_times is not None and self.frame_count else 0.0

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
        """Time at which exclusive end ``frame`` begins (the decoded end for the last frame)."""
        if frame < self.frame_count:
            return float(self.times[frame])
        return float(self.duration_s)


@dataclass(frozen=True)
class DurationCheck:
    """Decoded against declared duration: how a truncated file or a lying header is caught."""

    decoded_s: float
    declared_s: float  # the longest span the container claims for the picture (start offset ignored)
    container_s: float  # the container's duration field as probed

    @property
    def truncated(self) -> bool:
        return self.decoded_s < TRUNCATED_SHARE * self.declared_s and self.declared_s - self.decoded_s >= 1.0

    def metrics(self) -> dict:
        out: dict[str, float | bool | str] = {
            "decoded_duration_s": round(self.decoded_s, 3),
            "container_duration_s": round(self.container_s, 3),
            "truncated": self.truncated,
        }
        if self.truncated:
            out["truncation"] = (
                f"decoded {self.decoded_s:.1f} s of video, the container declares {self.declared_s:.1f} s: "
                "file truncated or its duration metadata wrong; results cover the decoded part only"
            )
        return out


def duration_check(vp: VisualPass, info: MediaInfo) -> DurationCheck:
    return DurationCheck(vp.duration_s, info.declared_video_duration_s(), info.duration_s)


def title_clock(source: np.ndarray, mpegts: bool) -> np.ndarray:
    """Seconds from the first frame, with timestamp discontinuities (spliced MPEG-TS) closed up."""
    if source.shape[0] < 2:
        return source - source[0]
    steps = np.round(np.diff(source), 9)  # timestamps are exact (pts x time base); keep the sums so
    broken = steps <= 0
    if mpegts:
        broken |= steps > DISCONTINUITY_S
    if broken.any():
        good = steps[~broken]
        steps = np.where(broken, float(np.median(good)) if good.size else 0.04, steps)
    return np.round(np.concatenate([[0.0], np.cumsum(steps)]), 9)


def frame_luma(rgb: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 BT.601 luma of (N, H, W, 3) uint8 RGB frames, in one pass."""
    return rgb.astype(np.float32) @ LUMA_WEIGHTS


def _frame_features(luma: np.ndarray, previous: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-frame measures of a chunk of (N, 72, 128) luma frames, each one whole-array operation."""
    n = luma.shape[0]
    pixels = luma.shape[1] * luma.shape[2]
    lap = luma[:, 1:-1, 1:-1] * np.float32(4.0)
    lap -= luma[:, :-2, 1:-1]
    lap -= luma[:, 2:, 1:-1]
    lap -= luma[:, 1:-1, :-2]
    lap -= luma[:, 1:-1, 2:]
    diff = np.empty(n, np.float32)
    diff[0] = 0.0 if previous is None else np.abs(luma[0] - previous).mean()
    diff[1:] = np.abs(luma[1:] - luma[:-1]).mean(axis=(1, 2))
    cell_h, cell_w = ANALYSIS_H // THUMB_H, ANALYSIS_W // THUMB_W
    thumbs = luma.reshape(n, THUMB_H, cell_h, THUMB_W, cell_w).sum(axis=2).sum(axis=3) / (cell_h * cell_w)
    return {
        "luma_mean": luma.mean(axis=(1, 2)),
        "luma_std": luma.std(axis=(1, 2)),
        "dark_ratio": np.count_nonzero(luma < BLACK_PIXEL_LUMA, axis=(1, 2)) / pixels,
        "clip_low": np.count_nonzero(luma < 5, axis=(1, 2)) / pixels,
        "clip_high": np.count_nonzero(luma > 250, axis=(1, 2)) / pixels,
        "sharpness": lap.reshape(n, -1).var(axis=1),
        "diff_prev": diff,
        "thumbs": np.clip(np.rint(thumbs), 0, 255).astype(np.uint8),
    }


def cuda_halvings(width: int, height: int) -> list[tuple[int, int]]:
    """Sizes of the on-GPU halving steps: even sizes, stopping while still at least twice the
    analysis frame, so the CPU's final area scale always reduces (never enlarges)."""
    steps: list[tuple[int, int]] = []
    w, h = width, height
    while w // 2 >= 2 * ANALYSIS_W and h // 2 >= 2 * ANALYSIS_H:
        w, h = (w // 2) & ~1, (h // 2) & ~1
        steps.append((w, h))
    return steps


@dataclass(frozen=True)
class SplitPoint:
    """A source timestamp where one time range of a title ends and the next begins: an exact
    presentation timestamp (in the filter graph's time base), so ranges meet without rounding."""

    pts: int
    time_base: Fraction

    @property
    def seconds(self) -> float:
        return self.pts * float(self.time_base)  # the same product the pass's source times are


def visual_filter_graph(
    gpu_halvings: list[tuple[int, int]] | None = None,
    start: SplitPoint | None = None,
    end: SplitPoint | None = None,
) -> str:
    """The pass's filter graph: one scale from the source to the analysis frame, the 48x27 frame
    derived from it, both stacked on one output. ``gpu_halvings`` (CUDA frames in) first halves
    on the GPU with ``scale_cuda`` and downloads only the last, small frame. ``start``/``end``
    keep only frames with ``start <= pts < end`` (``trim`` on exact timestamps, first in the
    graph, so frames outside the range are never scaled and the pass stops at ``end``)."""
    head = "[0:v]"
    bounds = ([f"start_pts={start.pts}"] if start else []) + ([f"end_pts={end.pts}"] if end else [])
    if bounds:
        head += "trim=" + ":".join(bounds) + ","
    if gpu_halvings:
        last = len(gpu_halvings) - 1
        head += ",".join(
            f"scale_cuda={w}:{h}:interp_algo=bilinear" + (":format=nv12" if i == last else "")
            for i, (w, h) in enumerate(gpu_halvings)
        )
        head += ",hwdownload,format=nv12,"
    return (
        f"{head}scale={ANALYSIS_W}:{ANALYSIS_H}:flags=area,format=rgb24,showinfo,split=2[analysis][from_analysis];"
        f"[from_analysis]scale={SMALL_W}:{SMALL_H},format=rgb24,pad={ANALYSIS_W}:{SMALL_H}[small];"
        "[analysis][small]vstack=inputs=2[out]"
    )


def _visual_pass_command(
    path: Path,
    info: MediaInfo | None = None,
    hwaccel: str | None = None,
    start: SplitPoint | None = None,
    end: SplitPoint | None = None,
    threads: int | None = None,
) -> list[str]:
    """ffmpeg command line of the visual pass (``hwaccel`` defaults to ``$PRISM_HWACCEL``).

    ``-copyts``: showinfo reports source timestamps, the same clock keyframe seeks use. A range
    from ``start`` seeks there first (``-seek_timestamp``: by source timestamp, to the keyframe
    at or before it); exactness comes from the graph's ``trim``, never from the seek.
    """
    if hwaccel is None:
        hwaccel = os.environ.get("PRISM_HWACCEL") or ""
    video = info.video if info is not None else None
    halvings: list[tuple[int, int]] = []
    if hwaccel == "cuda" and video is not None and not video.rotation:  # autorotate is a CPU filter
        halvings = cuda_halvings(video.width, video.height)
    options: list[str] = []
    if threads:
        options += ["-threads", str(threads)]
    if hwaccel:
        options += ["-hwaccel", hwaccel]
    if halvings:
        options += ["-hwaccel_output_format", "cuda"]
    if start is not None:  # rounded up to the microsecond: the seek lands on the keyframe at or before it
        options += ["-seek_timestamp", "1", "-ss", f"{math.ceil(start.seconds * 1e6) / 1e6:.6f}", "-noaccurate_seek"]
    return [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "info", "-nostdin", "-copyts", *options, "-i", input_arg(path),
        "-filter_complex", visual_filter_graph(halvings, start, end), "-map", "[out]",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-an", "-sn", "-dn", "pipe:1",
    ]  # fmt: skip


SMALL_FILE = "frames_48x27_rgb.u8"


def decode_visual(
    path: str | Path,
    info: MediaInfo,
    work_dir: str | Path,
    progress: Progress | None = None,
    chunks: int | None = None,
) -> VisualPass:
    """Decode the first video stream once; see the module docstring. Raises MediaError.

    ``chunks`` (default ``$PRISM_DECODE_CHUNKS``, else automatic: one per core for titles over
    two minutes, see :mod:`prism.media.chunks`) splits the pass into time ranges decoded
    concurrently and merged into the same result; 1 keeps one ffmpeg process. A chunked pass
    that fails or does not join up exactly is logged and replaced by the single pass.
    """
    path = Path(path)
    if info.video is None:
        raise MediaError(path, "no video stream (audio-only input)")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    from prism.media import chunks as chunking

    count = chunking.chunk_count(path, info, chunks)
    if count > 1:
        try:
            return chunking.decode_chunked(path, info, work_dir, count, progress)
        except chunking.ChunkingFailed as exc:
            log.warning("%s: chunked visual pass abandoned (%s); decoding in one pass", path, exc.cause)
    command = _visual_pass_command(path, info)
    try:
        return _single_pass(command, path, info, work_dir, progress)
    except NoFrameDecoded as exc:
        if "-hwaccel_output_format" not in command:
            raise
        # NVDEC lacks this codec or profile (ffmpeg then decodes in software, which scale_cuda cannot take)
        log.warning("%s: GPU visual pass failed (%s); decoding on the CPU", path, exc)
        return _single_pass(_visual_pass_command(path, info, hwaccel=""), path, info, work_dir, progress)


def _single_pass(
    command: list[str], path: Path, info: MediaInfo, work_dir: Path, progress: Progress | None
) -> VisualPass:
    small_file = work_dir / SMALL_FILE
    part = decode_range_with(command, path, info, small_file, progress)
    if part.count == 0:
        reason = part.error or "no video frame could be decoded"
        raise NoFrameDecoded(path, f"video decode failed: {reason}")
    if part.error:
        raise MediaError(path, f"video decode failed after {part.count} frames: {part.error}")
    source_times = part.source_times if part.source_times.shape[0] == part.count else None
    return assemble_visual_pass(path, info, small_file, part.count, source_times, part.features)


@dataclass
class VisualRange:
    """The pass over one time range of a title, before the title clock: what a chunk (or, one
    day, a Batch worker) hands to :func:`prism.media.chunks.merge_ranges`."""

    small_file: Path  # its 48x27 frames, raw RGB, ``count`` of them
    count: int
    source_times: np.ndarray  # float64 source timestamps showinfo reported (may fall short of ``count``)
    features: dict[str, np.ndarray]  # per-frame measures, as VisualPass names them
    first_luma: np.ndarray | None  # (72, 128) float32 luma of its first and last frames, to join
    last_luma: np.ndarray | None  # ``diff_prev`` across a range boundary
    start: SplitPoint | None = None
    end: SplitPoint | None = None
    error: str = ""  # ffmpeg's last line when it exited with an error


class Cancelled(Exception):
    """A range decode stopped because a sibling range failed."""


def decode_range_with(
    command: list[str],
    path: Path,
    info: MediaInfo,
    small_file: Path,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    start: SplitPoint | None = None,
    end: SplitPoint | None = None,
) -> VisualRange:
    """Run one visual-pass ffmpeg ``command`` and reduce what it decodes (the single pass is the
    range with no bounds). A reader thread drains the pipe while this thread reduces each chunk of
    frames. ffmpeg's exit status is reported in ``error``, not raised: the caller decides."""
    assert info.video is not None
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr  # narrowed, for the reader threads
    _grow_pipe(stdout)
    times: list[float] = []
    tail: deque[bytes] = deque(maxlen=8)

    def read_stderr() -> None:
        time_base = None
        for line in stderr:
            match = _PTS_TIME.search(line)
            if match:  # pts x time base is exact; pts_time is printed to 6 significant digits only
                times.append(int(match[1]) * time_base if time_base else float(match[2]))
            elif tb := _TIME_BASE.search(line):
                time_base = float(Fraction(int(tb[1]), int(tb[2]))) if int(tb[2]) else None
            else:
                tail.append(line)

    row_bytes = ANALYSIS_W * 3
    frame_bytes = row_bytes * (ANALYSIS_H + SMALL_H)
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=CHUNKS_AHEAD)

    def read_frames() -> None:  # keeps ffmpeg writing while the main thread reduces a chunk
        try:
            while buf := stdout.read(frame_bytes * CHUNK_FRAMES):
                chunks.put(buf)
        finally:
            chunks.put(None)

    threads = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_frames, daemon=True)]
    for thread in threads:
        thread.start()
    features: dict[str, list[np.ndarray]] = {}
    first = previous = None
    count = 0
    total = info.video.frame_count or (int(info.duration_s * info.video.fps) or None)
    try:
        with open(small_file, "wb") as small_out:
            while (buf := chunks.get()) is not None:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                n = len(buf) // frame_bytes
                if n == 0:
                    continue
                frames = np.frombuffer(buf, np.uint8, count=n * frame_bytes).reshape(
                    n, ANALYSIS_H + SMALL_H, ANALYSIS_W, 3
                )
                small_out.write(np.ascontiguousarray(frames[:, ANALYSIS_H:, :SMALL_W]).tobytes())
                luma = frame_luma(frames[:, :ANALYSIS_H])
                for key, value in _frame_features(luma, previous).items():
                    features.setdefault(key, []).append(value)
                if first is None:
                    first = luma[0].copy()
                previous = luma[-1]
                count += n
                if progress:
                    progress(count, total)
    except BaseException:
        proc.kill()
        while threads[1].is_alive():  # drain, so the reader reaches EOF instead of waiting on a full queue
            try:
                chunks.get(timeout=0.1)
            except queue.Empty:
                pass
        raise
    finally:
        returncode = proc.wait()
        for thread in threads:
            thread.join()
    merged = {key: np.concatenate(parts) for key, parts in features.items()}
    return VisualRange(
        small_file=small_file,
        count=count,
        source_times=np.asarray(times[:count], dtype=np.float64),
        features=merged,
        first_luma=first,
        last_luma=None if previous is None else previous.copy(),
        start=start,
        end=end,
        error=_stderr_reason(tail) if returncode else "",
    )


def assemble_visual_pass(
    path: Path,
    info: MediaInfo,
    small_file: Path,
    count: int,
    source_times: np.ndarray | None,
    features: dict[str, np.ndarray],
) -> VisualPass:
    """The VisualPass of ``count`` decoded frames: title clock, measured rate and duration, and
    the 48x27 frames memory-mapped from ``small_file``. ``source_times`` None: showinfo lost."""
    assert info.video is not None
    if source_times is not None:
        frame_times = title_clock(source_times, "mpegts" in info.format_name)
    else:  # fall back to the average rate; keyframes are then taken by frame index
        frame_times = np.arange(count, dtype=np.float64) / (info.video.fps or 25.0)
    span = float(frame_times[-1]) if count > 1 else 0.0
    fps = (count - 1) / span if span > 0 else (info.video.fps or 25.0)
    small = np.memmap(small_file, dtype=np.uint8, mode="r", shape=(count, SMALL_H, SMALL_W, 3))
    return VisualPass(
        frames_small=small,
        times=frame_times,
        fps=fps,
        duration_s=float(frame_times[-1]) + 1.0 / fps,
        source_times=source_times,
        **{k: v.astype(np.float32) if k != "thumbs" else v for k, v in features.items()},
    )


def _grow_pipe(stream) -> None:
    """Ask Linux for a 1 MiB pipe (default 64 KiB): ffmpeg blocks less often on a busy reader."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):  # not Linux, or above the system's pipe-max-size
        pass


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


def align_blocks(
    blocks: Iterable[np.ndarray], start_s: float, sample_rate: int, block_samples: int
) -> Iterator[np.ndarray]:
    """Put a track's sample blocks on the title clock (t=0 at the first video frame).

    ``start_s`` is where the track's first sample falls (``MediaInfo.audio_start_s``): a late
    track is preceded by that much digital silence, samples before the first frame are dropped.
    Blocks come out ``block_samples`` long (the last may be shorter), mono or (samples, channels).
    """
    shift = round(start_s * sample_rate)
    drop, pad = max(-shift, 0), max(shift, 0)
    pending: list[np.ndarray] = []
    held = 0
    for block in blocks:
        if drop:
            cut = min(drop, block.shape[0])
            block, drop = block[cut:], drop - cut
        if pad:
            zeros = np.zeros((pad, *block.shape[1:]), block.dtype)
            pending, held, pad = [zeros], pad, 0
        pending.append(block)
        held += block.shape[0]
        if held >= block_samples:
            merged = np.concatenate(pending)
            whole = merged.shape[0] - merged.shape[0] % block_samples
            for i in range(0, whole, block_samples):
                yield merged[i : i + block_samples]
            pending, held = [merged[whole:]], merged.shape[0] - whole
    if held:
        yield np.concatenate(pending)


def audio_blocks(
    path: str | Path,
    track: int = 0,
    sample_rate: int = 16000,
    channels: int = 1,
    block_s: float = 60.0,
    start_s: float = 0.0,
) -> Iterator[np.ndarray]:
    """Stream audio track ``track`` (0:a:N) as float32 blocks of ``block_s`` seconds (bounded memory).

    ``start_s``: see :func:`align_blocks`; with it, sample ``i`` is at ``i / sample_rate`` s of
    the title. Blocks are (samples,) for mono and (samples, channels) otherwise; every block but
    the last holds a whole number of 10 ms windows. Raises MediaError when nothing can be decoded.
    """
    block_samples = max(1, int(block_s * 100)) * (sample_rate // 100)
    raw = _decoded_blocks(Path(path), track, sample_rate, channels, block_samples)
    yield from align_blocks(raw, start_s, sample_rate, block_samples) if start_s else raw


def _decoded_blocks(
    path: Path, track: int, sample_rate: int, channels: int, block_samples: int
) -> Iterator[np.ndarray]:
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", input_arg(path),
        "-map", f"0:a:{track}", "-vn", "-sn", "-dn", "-ac", str(channels), "-ar", str(sample_rate),
        "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail: deque[bytes] = deque(maxlen=8)
    stderr = proc.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: tail.extend(stderr), daemon=True)
    reader.start()
    frame_bytes = 4 * channels
    total = 0
    assert proc.stdout is not None
    try:
        while buf := proc.stdout.read(block_samples * frame_bytes):
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


def decode_audio(path: str | Path, track: int = 0, sample_rate: int = 16000, channels: int = 1) -> AudioPCM:
    """Decode a whole audio track to float32 PCM, down-mixed to ``channels`` (short media only)."""
    data = np.concatenate(list(audio_blocks(path, track, sample_rate, channels)))
    return AudioPCM(samples=data, sample_rate=sample_rate, track=track)


SEEK_BACK_S = (0.0, 3.0, 20.0)  # where each seek attempt starts before the frame; then a decode from the start
PTS_TOLERANCE_S = 5e-4


@dataclass(frozen=True)
class FrameRequest:
    """One frame of the visual pass to write as JPEG, and how to find it again in the source."""

    frame: int  # index in the visual pass
    out_file: Path
    source_time_s: float | None  # its source timestamp; None when showinfo gave none
    occurrence: int = 0  # frames before it with the same source timestamp (spliced MPEG-TS)
    unique: bool = True  # no other frame has that timestamp, so a seek to it is unambiguous


@dataclass(frozen=True)
class WrittenFrame:
    out_file: Path
    width: int  # of the JPEG written
    height: int
    method: str  # seek | seek-retry | decode (from the start)


def frame_requests(vp: VisualPass, wanted: list[tuple[int, Path]]) -> list[FrameRequest]:
    """Requests for ``(frame, out_file)`` pairs, with each frame's timestamp and its ambiguity."""
    if vp.source_times is None:
        return [FrameRequest(frame, Path(out), None) for frame, out in wanted]
    ordered = np.sort(vp.source_times)
    out = []
    for frame, path in wanted:
        t = float(vp.source_times[frame])
        same = int(np.searchsorted(ordered, t + PTS_TOLERANCE_S) - np.searchsorted(ordered, t - PTS_TOLERANCE_S))
        before = int((np.abs(vp.source_times[:frame] - t) <= PTS_TOLERANCE_S).sum()) if same > 1 else 0
        out.append(FrameRequest(frame, Path(path), t, before, same == 1))
    return out


def _grab(path: Path, out_file: Path, quality: int, select: str, seek_s: float | None) -> tuple[list[float], str]:
    """Run one extraction: the source timestamps of the frames that passed ``select`` (the first
    is the one left in ``out_file``; ffmpeg may filter one more before stopping) and, on failure,
    ffmpeg's last line. Only that frame reaches the JPEG encoder, so the JPEG has its own size."""
    seek = ["-seek_timestamp", "1", "-ss", f"{seek_s:.6f}", "-noaccurate_seek"] if seek_s and seek_s > 0 else []
    # setpts=N/TB (one second apart) after showinfo: the JPEG encoder rejects the repeated timestamps of a spliced TS
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "info", "-copyts", *seek, "-i", input_arg(path),
        "-filter_complex", f"[0:v]select='{select}',showinfo,setpts=N/TB[kf]", "-map", "[kf]", "-frames:v", "1",
        "-fps_mode", "passthrough", "-autoscale", "0", "-update", "1", "-q:v", str(quality), "-y", input_arg(out_file),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True)
    pts, _, tail = _shown_frames(proc.stderr)
    if proc.returncode != 0 or not out_file.exists():
        return [], _stderr_reason(tail)
    return pts, ""


def _grab_nth(path: Path, out_file: Path, quality: int, select: str, nth: int) -> tuple[bool, str]:
    """Decode from the start and write the ``nth`` (from 0) frame passing ``select`` as JPEG:
    whether it was found, and on failure ffmpeg's last line.

    The frames that pass come out raw, each at its own size: one JPEG encoder given them all
    would take the first one's size and scale the others to it (or fail) when the stream's
    resolution changes, an SD break in an HD capture. A resolution change also rebuilds the
    filter graph, restarting any count inside it, so the count is kept here. Only the chosen
    frame is encoded.
    """
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "info", "-copyts", "-i", input_arg(path),
        "-filter_complex", f"[0:v]select='{select}',showinfo,format=rgb24[kf]", "-map", "[kf]",
        "-frames:v", str(nth + 1), "-fps_mode", "passthrough", "-autoscale", "0", "-f", "rawvideo", "pipe:1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True)
    _, sizes, tail = _shown_frames(proc.stderr)
    if proc.returncode != 0 or len(sizes) <= nth:
        return False, _stderr_reason(tail) if proc.returncode else ""
    offset = sum(w * h * 3 for w, h in sizes[:nth])
    width, height = sizes[nth]
    raw = proc.stdout[offset : offset + width * height * 3]
    if len(raw) != width * height * 3:
        return False, f"{len(proc.stdout)} bytes of frames, short of frame {nth} ({width}x{height})"
    encode = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-i", "pipe:0", "-frames:v", "1", "-update", "1", "-q:v", str(quality),
        "-y", input_arg(out_file),
    ]  # fmt: skip
    done = subprocess.run(encode, input=raw, capture_output=True)
    if done.returncode != 0 or not out_file.exists():
        return False, _stderr_reason(deque(done.stderr.splitlines(), maxlen=8))
    return True, ""


def _shown_frames(stderr: bytes) -> tuple[list[float], list[tuple[int, int]], deque[bytes]]:
    """From ffmpeg's stderr: each frame showinfo printed (source timestamp, size), and the last lines."""
    pts: list[float] = []
    sizes: list[tuple[int, int]] = []
    time_base = None
    tail: deque[bytes] = deque(maxlen=8)
    for line in stderr.splitlines():
        if match := _PTS_TIME.search(line):
            pts.append(int(match[1]) * time_base if time_base else float(match[2]))
            if size := _SHOWN_SIZE.search(line):
                sizes.append((int(size[1]), int(size[2])))
        elif tb := _TIME_BASE.search(line):
            time_base = int(tb[1]) / int(tb[2]) if int(tb[2]) else None
        elif not line.startswith(b" "):
            tail.append(line)
    return pts, sizes, tail


def extract_frame(path: str | Path, request: FrameRequest, quality: int = 2) -> WrittenFrame:
    """Write the full-resolution frame ``request`` names as JPEG, by seeking (no full decode).

    Seeks by source timestamp to just before the frame, decodes forward, keeps the first frame at
    or after that timestamp and checks (showinfo) that the frame written carries exactly it.
    Demuxers without an index (MPEG-TS) may land past the frame, or mid-GOP where the decoder
    skips to the next keyframe: the seek then starts further back, and as a last resort (or for
    an ambiguous timestamp) the file is decoded from the start to that frame. Raises MediaError.
    """
    path, out = Path(path), Path(request.out_file)
    reason = "no frame decoded"
    t = request.source_time_s
    if t is not None and request.unique:
        for attempt, back in enumerate(SEEK_BACK_S):
            pts, reason = _grab(path, out, quality, f"gte(t,{t - PTS_TOLERANCE_S:.6f})", t - back - PTS_TOLERANCE_S)
            if pts and abs(pts[0] - t) <= PTS_TOLERANCE_S:
                return _written(out, "seek" if attempt == 0 else "seek-retry")
    if t is not None:  # the (occurrence+1)-th frame carrying that timestamp, counted from the start
        window = f"between(t,{t - PTS_TOLERANCE_S:.6f},{t + PTS_TOLERANCE_S:.6f})"
        found, reason = _grab_nth(path, out, quality, window, request.occurrence)
        if found:
            return _written(out, "decode")
    else:
        pts, reason = _grab(path, out, quality, f"eq(n,{request.frame})", None)
        if pts:
            return _written(out, "decode")
    out.unlink(missing_ok=True)
    where = f"{t:.3f} s (source time)" if t is not None else f"index {request.frame}"
    raise MediaError(path, f"could not extract frame {request.frame} at {where}: {reason or 'not found in the stream'}")


def _written(out: Path, method: str) -> WrittenFrame:
    from PIL import Image

    with Image.open(out) as image:
        width, height = image.size
    return WrittenFrame(out, width, height, method)


def extract_frames(
    path: str | Path,
    requests: list[FrameRequest],
    workers: int = 4,
    on_done: Callable[[WrittenFrame], None] | None = None,
) -> list[WrittenFrame]:
    """Extract several frames concurrently (each seek decodes one GOP or so); results in request order."""

    def one(request: FrameRequest) -> WrittenFrame:
        written = extract_frame(path, request)
        if on_done:
            on_done(written)
        return written

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, requests))
