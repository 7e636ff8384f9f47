"""The visual pass of one title split into time ranges decoded concurrently, merged exactly.

ffmpeg decodes with several threads but runs the pass's filter graph (scale, showinfo) on one,
and the Python reduction is one thread too, so a single pass leaves most of a 16-core host idle.
Here a long title is cut at keyframes into ``n`` ranges; each range is one ffmpeg process that
seeks to its keyframe (cheap: no decode before it) and keeps exactly the frames whose source
timestamp lies in ``[start, end)`` (``trim`` on exact timestamps, so no frame is lost or
repeated at a boundary whatever the seek did), reduced by its own thread. The merge concatenates
the ranges (one memory-mapped 48x27 file for the title, as the single pass writes), recomputes
what depends on the previous frame (``diff_prev`` of each range's first frame) and checks the
join: every range must start exactly on its planned timestamp, source times must increase
strictly, and the step across each boundary must be one frame step. Anything else (a failed
range, a seek that skipped a frame, edit lists or VFR oddities that break the join) abandons
the chunked pass and the caller decodes in one pass. MPEG-TS is never chunked: no index to
seek by, and timestamps may jump back (splices) or wrap, so "a range of timestamps" is not a
range of the title.

TransNetV2 has no boundary problem: the shots stage runs on the merged 48x27 frames, with its
own window context across what were range boundaries, so its cuts are those of the single pass.
Keep it that way: inference must never run per range without the 25-frame context on each side.

Across Batch workers (not wired): a coordinator calls :func:`plan_splits` once; worker ``k``
calls :func:`decode_range` for ``splits[k-1]..splits[k]`` into its own ``small_file`` and ships
the file plus :func:`save_range`'s arrays; the job that runs the visual stages loads them
(:func:`load_range`) and calls :func:`merge_ranges`, which raises :class:`ChunkingFailed`
when they do not join up exactly (then decode in one pass).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from prism.contract import ENV_DECODE_CHUNKS
from prism.errors import ConfigError, MediaError
from prism.media.decode import (
    SMALL_FILE,
    Cancelled,
    Progress,
    SplitPoint,
    VisualPass,
    VisualRange,
    _visual_pass_command,
    assemble_visual_pass,
    decode_range_with,
)
from prism.media.probe import MediaInfo
from prism.media.tools import ffmpeg_exe, input_arg

log = logging.getLogger(__name__)

CHUNKS_ENV = ENV_DECODE_CHUNKS
MIN_CHUNKED_S = 120.0  # automatic chunking only above this (declared) duration
MIN_CHUNK_S = 60.0  # and at most one range per this many seconds
BOUNDARY_STEP_SLACK = 1.5  # the step across a boundary may be this many local frame steps at most
TS_SUFFIXES = {".ts", ".m2ts", ".mts", ".m2t", ".trp"}

_KEY_PTS = re.compile(rb"\bn:\s*\d+\s+pts:\s*(-?\d+)\s+pts_time:")
_TIME_BASE = re.compile(rb"config in time_base:\s*(\d+)/(\d+)")


class ChunkingFailed(MediaError):
    """The chunked pass cannot stand in for the single pass (the cause says why)."""


def is_mpegts(path: Path, info: MediaInfo) -> bool:
    return "mpegts" in info.format_name or (info.format_name == "unknown" and path.suffix.lower() in TS_SUFFIXES)


def configured_chunks() -> int | None:
    """``$PRISM_DECODE_CHUNKS`` as a number (None when unset); ConfigError naming it when it is not one."""
    env = os.environ.get(CHUNKS_ENV, "").strip()
    if not env:
        return None
    try:
        chunks = int(env)
    except ValueError:
        raise ConfigError(f"{CHUNKS_ENV}={env!r}: expected a whole number of chunks (1 disables)") from None
    if chunks < 1:
        raise ConfigError(f"{CHUNKS_ENV}={env!r}: expected a whole number of chunks >= 1 (1 disables)")
    return chunks


def chunk_count(path: Path, info: MediaInfo, chunks: int | None = None) -> int:
    """How many ranges to decode ``path`` in: ``chunks``, else ``$PRISM_DECODE_CHUNKS``, else
    one per core for titles over two minutes (at least a minute each); 1 for MPEG-TS."""
    if chunks is None:
        chunks = configured_chunks()
    if chunks is not None and chunks < 1:
        raise ConfigError(f"decode chunks must be >= 1, got {chunks}")
    if is_mpegts(path, info):
        if chunks and chunks > 1:
            log.info("%s: MPEG-TS is decoded in one pass (no index to seek by, timestamps may jump)", path)
        return 1
    if chunks is not None:
        return chunks
    duration = info.declared_video_duration_s() or info.duration_s
    if duration <= MIN_CHUNKED_S:
        return 1
    return max(1, min(os.cpu_count() or 1, int(duration // MIN_CHUNK_S)))


def keyframe_at_or_before(path: Path, target_s: float) -> SplitPoint | None:
    """The first keyframe ffmpeg decodes after seeking to source time ``target_s``: with an index
    (MP4, Matroska) the keyframe at or before it. One frame is decoded; ffmpeg only (no ffprobe).
    Its timestamp is in the time base the visual pass's filter graph sees."""
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "info", "-nostdin", "-copyts",
        "-seek_timestamp", "1", "-ss", f"{target_s:.6f}", "-noaccurate_seek", "-i", input_arg(path),
        "-filter_complex", "[0:v]select='eq(key,1)',showinfo[k]", "-map", "[k]", "-frames:v", "1",
        "-an", "-sn", "-dn", "-f", "null", "-",
    ]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True)
    pts, tb = _KEY_PTS.search(proc.stderr), _TIME_BASE.search(proc.stderr)
    if proc.returncode != 0 or pts is None or tb is None or int(tb[2]) == 0:
        return None
    return SplitPoint(int(pts[1]), Fraction(int(tb[1]), int(tb[2])))


def plan_splits(path: Path, info: MediaInfo, chunks: int) -> list[SplitPoint]:
    """Up to ``chunks - 1`` increasing keyframe timestamps cutting the title into near-equal
    ranges (declared duration: only where the cuts fall depends on it, not correctness)."""
    origin = info.origin_s
    span = info.declared_video_duration_s() or info.duration_s
    if chunks < 2 or span <= 0:
        return []
    targets = [origin + span * k / chunks for k in range(1, chunks)]
    with ThreadPoolExecutor(max_workers=min(len(targets), os.cpu_count() or 1)) as pool:
        found = list(pool.map(lambda t: keyframe_at_or_before(path, t), targets))
    splits: list[SplitPoint] = []
    for point in found:
        if point is None or point.seconds <= origin + 1e-6:
            continue  # no keyframe there, or the first frame's: that range would be empty
        if splits and (point.time_base != splits[-1].time_base or point.seconds <= splits[-1].seconds):
            continue  # long GOPs: two targets found the same keyframe
        splits.append(point)
    return splits


def decode_range(
    path: str | Path,
    info: MediaInfo,
    small_file: str | Path,
    start: SplitPoint | None,
    end: SplitPoint | None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    threads: int | None = None,
) -> VisualRange:
    """The visual pass over frames with source timestamp in ``[start, end)`` (None: the title's
    start or end), 48x27 frames written to ``small_file``. Raises MediaError when it fails."""
    path = Path(path)
    command = _visual_pass_command(path, info, start=start, end=end, threads=threads)
    part = decode_range_with(command, path, info, Path(small_file), progress, cancel, start, end)
    where = f"[{start.seconds if start else 'start'}, {end.seconds if end else 'end'})"
    if part.error:
        raise MediaError(path, f"video decode of range {where} failed after {part.count} frames: {part.error}")
    if part.count == 0:
        raise MediaError(path, f"video decode of range {where}: no frame decoded")
    return part


def merge_ranges(path: Path, info: MediaInfo, ranges: list[VisualRange], out_file: Path) -> VisualPass:
    """Join consecutive ranges into the title's VisualPass (see the module docstring for the
    checks). The ranges' 48x27 files are concatenated into ``out_file`` and removed. Raises
    ChunkingFailed, leaving the range files to the caller, when the ranges do not join exactly."""
    _check_join(path, ranges)
    features = {key: np.concatenate([r.features[key] for r in ranges]) for key in ranges[0].features}
    at = 0
    for before, after in itertools.pairwise(ranges):
        at += before.count
        assert after.first_luma is not None and before.last_luma is not None  # _check_join: every range has frames
        features["diff_prev"][at] = np.abs(after.first_luma - before.last_luma).mean()
    source_times = np.concatenate([r.source_times for r in ranges])
    count = int(source_times.shape[0])
    tmp = out_file.with_name(out_file.name + ".merging")
    try:
        with open(tmp, "wb") as out:
            for r in ranges:
                with open(r.small_file, "rb") as part:
                    shutil.copyfileobj(part, out, 16 << 20)
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
    for r in ranges:
        if r.small_file != out_file:
            r.small_file.unlink(missing_ok=True)
    return assemble_visual_pass(path, info, out_file, count, source_times, features)


def _check_join(path: Path, ranges: list[VisualRange]) -> None:
    if not ranges:
        raise ChunkingFailed(path, "no range to merge")
    for k, r in enumerate(ranges):
        if r.count == 0 or r.source_times.shape[0] != r.count:
            raise ChunkingFailed(path, f"range {k}: {r.source_times.shape[0]} timestamps for {r.count} frames")
        if k and (r.start is None or ranges[k - 1].end != r.start):
            raise ChunkingFailed(path, f"range {k} does not start where range {k - 1} ends")
        if r.start is not None and abs(r.source_times[0] - r.start.seconds) > 1e-9:
            raise ChunkingFailed(
                path, f"range {k} starts at {r.source_times[0]:.6f} s, not on its keyframe at {r.start.seconds:.6f} s"
            )
        if r.source_times.shape[0] > 1 and not (np.diff(r.source_times) > 0).all():
            raise ChunkingFailed(path, f"range {k}: source timestamps do not increase (discontinuity)")
    for k in range(1, len(ranges)):
        before, after = ranges[k - 1].source_times, ranges[k].source_times
        step = after[0] - before[-1]
        local = [float(np.median(np.diff(t))) for t in (before[-9:], after[:9]) if t.shape[0] > 1]
        if step <= 0 or (local and step > BOUNDARY_STEP_SLACK * max(local) + 1e-9):
            raise ChunkingFailed(
                path, f"step of {step:.6f} s between ranges {k - 1} and {k} (frame step {max(local, default=0):.6f} s)"
            )


def decode_chunked(
    path: Path, info: MediaInfo, work_dir: Path, chunks: int, progress: Progress | None = None
) -> VisualPass:
    """The visual pass in ``chunks`` concurrent ranges; raises ChunkingFailed (no file left
    behind) when it cannot stand in for the single pass."""
    work_dir.mkdir(parents=True, exist_ok=True)
    splits = plan_splits(path, info, chunks)
    if not splits:
        raise ChunkingFailed(path, f"no keyframe found to split at (asked for {chunks} chunks)")
    bounds = [None, *splits, None]
    n = len(bounds) - 1
    threads = max(1, (os.cpu_count() or 1) // n)  # decoder threads per ffmpeg: the ranges share the cores
    done = [0] * n
    lock = threading.Lock()
    cancel = threading.Event()
    total = None

    def on_progress(k: int):
        def report(count: int, tot: int | None) -> None:
            nonlocal total
            with lock:
                done[k], total = count, tot
                if progress:
                    progress(sum(done), total)

        return report

    def one(k: int) -> VisualRange:
        small = work_dir / f"{SMALL_FILE}.part{k}"
        try:
            return decode_range(path, info, small, bounds[k], bounds[k + 1], on_progress(k), cancel, threads)
        except BaseException:
            cancel.set()
            raise

    parts = [work_dir / f"{SMALL_FILE}.part{k}" for k in range(n)]
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(one, k) for k in range(n)]
            errors = [f.exception() for f in futures]
        first_error = next((e for e in errors if e is not None and not isinstance(e, Cancelled)), None)
        if first_error is not None:
            raise ChunkingFailed(path, getattr(first_error, "cause", None) or str(first_error)) from first_error
        ranges = [f.result() for f in futures]
        return merge_ranges(path, info, ranges, work_dir / SMALL_FILE)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)


def _save_arrays(r: VisualRange) -> dict[str, np.ndarray]:
    arrays = {f"feature_{k}": v for k, v in r.features.items()}
    arrays["source_times"] = r.source_times
    arrays["count"] = np.array(r.count)
    for name, luma in (("first_luma", r.first_luma), ("last_luma", r.last_luma)):
        if luma is not None:
            arrays[name] = luma
    for name, point in (("start", r.start), ("end", r.end)):
        if point is not None:
            arrays[name] = np.array([point.pts, point.time_base.numerator, point.time_base.denominator], np.int64)
    return arrays


def save_range(r: VisualRange, npz_file: str | Path) -> None:
    """Write a range's arrays (not its 48x27 file) for another machine to merge."""
    np.savez(npz_file, **_save_arrays(r))  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def load_range(npz_file: str | Path, small_file: str | Path) -> VisualRange:
    """A range saved by :func:`save_range`, its 48x27 frames in ``small_file``."""
    with np.load(npz_file) as data:

        def point(name: str) -> SplitPoint | None:
            if name not in data:
                return None
            pts, num, den = (int(v) for v in data[name])
            return SplitPoint(pts, Fraction(num, den))

        return VisualRange(
            small_file=Path(small_file),
            count=int(data["count"]),
            source_times=data["source_times"],
            features={k[len("feature_") :]: data[k] for k in data.files if k.startswith("feature_")},
            first_luma=data.get("first_luma"),
            last_luma=data.get("last_luma"),
            start=point("start"),
            end=point("end"),
        )


__all__ = [
    "ChunkingFailed",
    "chunk_count",
    "decode_chunked",
    "decode_range",
    "keyframe_at_or_before",
    "load_range",
    "merge_ranges",
    "plan_splits",
    "save_range",
]
