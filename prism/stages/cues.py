"""``cues``: technical cues for content QC — black, frozen and silent spans.

Black and frozen come from the shared visual decode pass (no extra decode): a frame is black
when at least ``black_pixel_ratio`` of its pixels are darker than 10 % (ffmpeg blackdetect's
definitions), frozen when it differs from the previous frame by less than ``freeze_max_diff``
(mean absolute luma, 0..255). Silence comes from a streamed 16 kHz mono decode of the first audio
track (``StageContext.audio_track``: the audio stage's decode when both run in one title run):
10 ms windows whose RMS level stays under ``silence_db`` dBFS (``prism.audio.levels``), aligned on
the title clock (t=0 at the first decoded frame): time before a late-starting track counts as
silence, audio before the first frame is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from prism.audio.levels import WINDOW_S, level_db, silent_runs
from prism.audio.pcm import ANALYSIS_RATE
from prism.errors import MediaError
from prism.media.decode import VisualPass, align_blocks, duration_check
from prism.provenance import code_version
from prism.stages.base import ModelInfo, Output, ReportLane, Stage, StageContext, StageResult, register
from prism.timeline import runs

SILENCE_RATE = ANALYSIS_RATE
SILENCE_BLOCK_S = 60.0


@dataclass(frozen=True)
class CuesParams:
    black_pixel_ratio: float = 0.98
    black_min_s: float = 0.5
    freeze_max_diff: float = 0.1
    freeze_min_s: float = 1.0
    silence_db: float = -60.0
    silence_min_s: float = 0.5
    audio_track: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.black_pixel_ratio <= 1.0:
            raise ValueError("black_pixel_ratio must be in (0, 1]")
        if min(self.black_min_s, self.freeze_min_s, self.silence_min_s) <= 0:
            raise ValueError("minimum durations must be > 0")
        if self.freeze_max_diff <= 0:
            raise ValueError("freeze_max_diff must be > 0")
        if self.silence_db >= 0:
            raise ValueError("silence_db must be negative (dBFS)")
        if self.audio_track < 0:
            raise ValueError("audio_track must be >= 0")


CUES_SCHEMA = pa.schema(
    [
        ("cue_type", pa.string()),  # black | frozen | silence
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("start_frame", pa.int64()),  # null for audio cues
        ("end_frame", pa.int64()),
        ("value", pa.float64()),
        ("value_unit", pa.string()),
    ],
    metadata={"prism.artifact": "cues", "prism.artifact_version": "1"},
)


@register
class CuesStage(Stage):
    name = "cues"
    Params = CuesParams
    outputs = (
        Output(
            "cues.parquet",
            "parquet",
            CUES_SCHEMA,
            "black, frozen and silent spans",
            show=("cue_type", "start_s", "end_s", "value", "value_unit"),
        ),
    )
    report_lane = ReportLane(kind="cues", order=20)
    display_order = 30

    def model(self) -> ModelInfo:
        return ModelInfo("prism-cue-rules", f"code-{code_version(__name__)}")

    def run(self, ctx: StageContext) -> StageResult:
        rows: list[dict] = []
        metrics: dict = {}
        vp = None if ctx.info.video is None else ctx.visual()  # audio only: silence is all there is to find
        if vp is not None:
            rows, metrics = self._visual_cues(vp, ctx)
        else:
            metrics["visual"] = "not analysed: no video stream"  # black and frozen
        self._silence(ctx, vp, rows, metrics)
        rows.sort(key=lambda r: (r["start_s"], r["cue_type"]))
        self.write_table(ctx, "cues.parquet", rows)
        counts = {kind: sum(r["cue_type"] == kind for r in rows) for kind in ("black", "frozen", "silence")}
        metrics.update(counts)
        return StageResult(
            outputs=["cues.parquet"],
            metrics=metrics,
            summary=", ".join(f"{v} {k}" for k, v in counts.items()),
        )

    def _visual_cues(self, vp: VisualPass, ctx: StageContext) -> tuple[list[dict], dict]:
        """Black and frozen spans, and the duration check, from the shared visual pass."""
        p = self.params
        rows: list[dict] = []

        def add_frame_spans(kind: str, mask: np.ndarray, min_s: float, value_of, unit: str) -> None:
            for start, end in runs(mask):
                start_s, end_s = float(vp.times[start]), vp.end_time(end)
                if end_s - start_s + 1e-9 < min_s:
                    continue
                rows.append(
                    {
                        "cue_type": kind,
                        "start_s": start_s,
                        "end_s": end_s,
                        "duration_s": end_s - start_s,
                        "start_frame": start,
                        "end_frame": end,
                        "value": float(value_of(start, end)),
                        "value_unit": unit,
                    }
                )

        black = vp.dark_ratio >= p.black_pixel_ratio
        add_frame_spans("black", black, p.black_min_s, lambda a, b: vp.luma_mean[a:b].mean(), "mean_luma_0_255")
        # frame i repeats frame i-1: the frozen span starts on the frame that got held
        repeats = vp.diff_prev < p.freeze_max_diff
        repeats[0] = False
        held = repeats.copy()
        held[:-1] |= repeats[1:]
        add_frame_spans(
            "frozen",
            held & ~black,
            p.freeze_min_s,
            lambda a, b: vp.diff_prev[a + 1 : b].max(initial=0.0),
            "max_frame_diff_0_255",
        )
        return rows, duration_check(vp, ctx.info).metrics()

    def _silence(self, ctx: StageContext, vp: VisualPass | None, rows: list[dict], metrics: dict) -> None:
        """Silent spans of the chosen audio track, on the title clock (the first video frame, or
        without video the first audio sample, is t=0)."""
        p = self.params
        tracks = ctx.info.audio_tracks
        if not tracks:
            metrics["silence"] = "not analysed: no audio track"
        elif p.audio_track >= len(tracks):
            metrics["silence"] = f"not analysed: no audio track {p.audio_track} (file has {len(tracks)})"
        else:
            try:
                origin = vp.origin_s if vp is not None and vp.source_times is not None else None
                start = ctx.info.audio_start_s(p.audio_track, origin)  # on the title clock, as the frames are
                # the audio stage reads the same track: decode it once, with loudness, if it runs later
                stream = ctx.audio_track(p.audio_track, block_s=SILENCE_BLOCK_S, loudness=bool(ctx.will_run("audio")))
                blocks = align_blocks(stream.blocks(), start, SILENCE_RATE, stream.block_samples)
                levels = [level_db(b, SILENCE_RATE) for b in blocks]
                if stream.exit_reason:  # as before the shared decode: a stream ffmpeg gave up on is not analysed
                    raise MediaError(ctx.source, f"audio track {p.audio_track} decode failed: {stream.exit_reason}")
                level = np.concatenate(levels) if levels else np.zeros(0, np.float32)  # all before the first frame
                rows += silence_spans(level, p.silence_db, p.silence_min_s)
            except MediaError as exc:  # a corrupt audio stream must not hide the visual cues
                if vp is None:  # nothing else to report: the stage fails on it
                    raise
                metrics["silence"] = f"not analysed: {exc}"


def silence_cues(samples: np.ndarray, sample_rate: int, silence_db: float, min_s: float) -> list[dict]:
    return silence_spans(level_db(samples, sample_rate), silence_db, min_s)


def silence_spans(level: np.ndarray, silence_db: float, min_s: float) -> list[dict]:
    """Silence cues from consecutive 10 ms RMS levels (dBFS)."""
    out = []
    for start, end in silent_runs(level, silence_db, min_s):
        start_s, end_s = start * WINDOW_S, end * WINDOW_S
        out.append(
            {
                "cue_type": "silence",
                "start_s": start_s,
                "end_s": end_s,
                "duration_s": end_s - start_s,
                "start_frame": None,
                "end_frame": None,
                "value": float(level[start:end].max()),
                "value_unit": "max_rms_dbfs",
            }
        )
    return out
