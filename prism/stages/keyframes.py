"""``keyframes``: the best representative frame(s) of each shot, as full-resolution JPEGs.

Candidates come from the shared decode pass (no extra decode): every frame of the shot away
from its transitions, scored on sharpness, exposure, contrast and stillness. A shot gets one
keyframe per ``seconds_per_keyframe`` (at most ``max_per_shot``), each the best of its part of
the shot and never a near-duplicate of the keyframe before it (16x9 thumbnails compared).
Only the chosen frames are fetched at full resolution, by seeking to their source timestamps
(checked, with a decode from the start as the last resort); each row records the size of the
JPEG actually written, which can differ from the stream header's (mid-stream resolution changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from prism.media.decode import VisualPass, WrittenFrame, extract_frames, frame_requests
from prism.provenance import code_version
from prism.stages.base import ModelInfo, Output, Stage, StageContext, StageResult, register

BLACK_FRAME_RATIO = 0.98


@dataclass(frozen=True)
class KeyframesParams:
    max_per_shot: int = 3
    seconds_per_keyframe: float = 8.0
    margin_frames: int = 2
    duplicate_threshold: float = 6.0  # mean abs difference of 16x9 luma thumbnails (0..255)
    jpeg_quality: int = 2  # ffmpeg -q:v, 2 (best) .. 31
    workers: int = 4

    def __post_init__(self) -> None:
        if self.max_per_shot < 1:
            raise ValueError("max_per_shot must be >= 1")
        if self.seconds_per_keyframe <= 0:
            raise ValueError("seconds_per_keyframe must be > 0")
        if self.margin_frames < 0 or self.duplicate_threshold < 0:
            raise ValueError("margin_frames and duplicate_threshold must be >= 0")
        if not 2 <= self.jpeg_quality <= 31:
            raise ValueError("jpeg_quality must be in 2..31 (ffmpeg -q:v)")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")


def frame_scores(vp: VisualPass) -> dict[str, np.ndarray]:
    """Per-frame quality in [0, 1] and its parts."""
    sharp = np.log1p(vp.sharpness)
    sharp = sharp / max(float(sharp.max()), 1e-6)
    exposure = np.clip(1.0 - np.abs(vp.luma_mean - 118.0) / 118.0, 0, 1) * np.clip(
        1.0 - vp.clip_low - vp.clip_high, 0, 1
    )
    contrast = np.clip(vp.luma_std / 64.0, 0, 1)
    stillness = 1.0 / (1.0 + vp.diff_prev / 8.0)
    quality = 0.4 * sharp + 0.3 * exposure + 0.15 * contrast + 0.15 * stillness
    return {"quality": quality, "sharpness": sharp, "exposure": exposure, "contrast": contrast, "stillness": stillness}


def _near_duplicate(vp: VisualPass, a: int, b: int, threshold: float) -> bool:
    diff = np.abs(vp.thumbs[a].astype(np.int16) - vp.thumbs[b].astype(np.int16)).mean()
    return bool(diff < threshold)


def select_keyframes(vp: VisualPass, shots: pa.Table, p: KeyframesParams, quality: np.ndarray) -> list[tuple[int, int]]:
    """(shot_index, frame) of the chosen keyframes, in frame order."""
    cols = shots.to_pydict()
    n_shots = shots.num_rows
    chosen: list[tuple[int, int]] = []
    last: int | None = None
    for k in range(n_shots):
        start, end = cols["start_frame"][k], cols["end_frame"][k]
        lo = max(start, cols["transition_end_frame"][k]) + p.margin_frames
        hi = (cols["transition_start_frame"][k + 1] if k + 1 < n_shots else end) - p.margin_frames
        if hi <= lo:  # very short shot: fall back to the whole shot
            lo, hi = start, end
        usable = np.arange(lo, hi)
        usable = usable[vp.dark_ratio[usable] < BLACK_FRAME_RATIO]
        if usable.size == 0:
            continue  # an all-black shot has no representative frame
        duration = cols["duration_s"][k]
        wanted = max(1, min(p.max_per_shot, math.ceil(duration / p.seconds_per_keyframe)))
        for part in np.array_split(usable, wanted):
            if part.size == 0:
                continue
            for frame in part[np.argsort(-quality[part], kind="stable")]:
                frame = int(frame)
                if last is not None and _near_duplicate(vp, frame, last, p.duplicate_threshold):
                    continue
                chosen.append((k, frame))
                last = frame
                break
    return chosen


KEYFRAMES_SCHEMA = pa.schema(
    [
        ("shot_index", pa.int32()),
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("quality", pa.float32()),
        ("sharpness", pa.float32()),
        ("exposure", pa.float32()),
        ("contrast", pa.float32()),
        ("stillness", pa.float32()),
        ("rank", pa.int32()),
    ],
    metadata={"prism.artifact": "keyframes", "prism.artifact_version": "1"},
)


@register
class KeyframesStage(Stage):
    name = "keyframes"
    requires = ("shots",)
    Params = KeyframesParams
    execution_params = frozenset({"workers"})
    outputs = (
        Output(
            "keyframes.parquet",
            "parquet",
            KEYFRAMES_SCHEMA,
            "the chosen keyframes of each shot",
            show=("shot_index", "rank", "time_s", "quality", "path"),
        ),
        Output("keyframes/*.jpg", "jpg", description="full-resolution JPEG of each keyframe"),
    )
    display_order = 20

    def model(self) -> ModelInfo:
        return ModelInfo("prism-keyframe-scorer", f"code-{code_version(__name__)}")

    def run(self, ctx: StageContext) -> StageResult:
        shots = ctx.read_table("shots.parquet")
        vp = ctx.visual()
        scores = frame_scores(vp)
        picks = select_keyframes(vp, shots, self.params, scores["quality"])
        by_shot: dict[int, list[int]] = {}
        for shot, frame in picks:
            by_shot.setdefault(shot, []).append(frame)
        rank = {  # 0 = the shot's best keyframe
            frame: i
            for frames in by_shot.values()
            for i, frame in enumerate(sorted(frames, key=lambda f: -scores["quality"][f]))
        }
        (ctx.staging / "keyframes").mkdir()
        paths = [f"keyframes/{shot:05d}_{frame:07d}.jpg" for shot, frame in picks]
        requests = frame_requests(vp, [(frame, ctx.staging / rel) for (_, frame), rel in zip(picks, paths)])
        done = 0

        def fetched(_: WrittenFrame) -> None:
            nonlocal done
            done += 1
            ctx.progress(done, len(requests), "seek")

        written = extract_frames(ctx.source, requests, workers=self.params.workers, on_done=fetched)
        rows = [
            {
                "shot_index": shot,
                "frame": frame,
                "time_s": float(vp.times[frame]),
                "path": rel,
                "width": jpeg.width,
                "height": jpeg.height,
                **{name: float(values[frame]) for name, values in scores.items()},
                "rank": rank[frame],
            }
            for (shot, frame), rel, jpeg in zip(picks, paths, written)
        ]
        self.write_table(ctx, "keyframes.parquet", rows)
        covered = len({r["shot_index"] for r in rows})
        methods = {m: sum(w.method == m for w in written) for m in ("seek", "seek-retry", "decode")}
        return StageResult(
            outputs=["keyframes.parquet", *(str(r["path"]) for r in rows)],
            metrics={
                "keyframes": len(rows),
                "shots_with_keyframe": covered,
                "shots": shots.num_rows,
                "seeks_retried": methods["seek-retry"],
                "decoded_from_start": methods["decode"],
            },
            summary=f"{len(rows)} keyframes for {covered}/{shots.num_rows} shots",
        )
