"""A test-only stage declared entirely in this one file: ``shot_tone``, bright/dark spans per shot.

It declares a Parquet output with its schema, a ``spans`` report lane and the columns ``prism
show`` prints, and nothing else in the code base names it: the tests register it (in an isolated
registry) and check that the runner, ``prism show``, the HTML report and the CDK job layout all
pick it up. ``drift=true`` writes the file behind the declaration's back with a wrong column
type, to check that the stage then fails. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from prism.artifacts import write_parquet
from prism.stages.base import ModelInfo, Output, ReportLane, Stage, StageContext, StageResult

SHOT_TONE_SCHEMA = pa.schema(
    [
        ("shot_index", pa.int32()),
        ("tone", pa.string()),  # bright | dark
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("mean_luma", pa.float64()),
    ],
    metadata={"prism.artifact": "shot_tone", "prism.artifact_version": "1"},
)


@dataclass(frozen=True)
class ShotToneParams:
    bright_luma: float = 100.0  # mean luma (0..255) above which a shot is bright
    drift: bool = False


class ShotToneStage(Stage):
    name = "shot_tone"
    requires = ("shots",)
    Params = ShotToneParams
    outputs = (
        Output(
            "shot_tone.parquet",
            "parquet",
            SHOT_TONE_SCHEMA,
            "bright or dark, per shot",
            show=("shot_index", "tone", "start_s", "mean_luma"),
        ),
    )
    report_lane = ReportLane(output="shot_tone.parquet", label="tone", title="tone")

    def model(self) -> ModelInfo:
        return ModelInfo("mean-luma-threshold", "1")

    def run(self, ctx: StageContext) -> StageResult:
        shots = ctx.read_table("shots.parquet").to_pydict()
        vp = ctx.visual()
        rows = []
        for k, (a, b) in enumerate(zip(shots["start_frame"], shots["end_frame"])):
            luma = float(vp.luma_mean[a:b].mean())
            tone = "bright" if luma > self.params.bright_luma else "dark"
            rows.append({"shot_index": k, "tone": tone, "start_s": shots["start_s"][k], "end_s": shots["end_s"][k],
                         "mean_luma": luma})  # fmt: skip
        if self.params.drift:  # a column that changed type without the declaration being updated
            schema = SHOT_TONE_SCHEMA.set(4, pa.field("mean_luma", pa.string()))
            drifted = [{**r, "mean_luma": f"{r['mean_luma']:.1f}"} for r in rows]
            write_parquet(ctx.staging / "shot_tone.parquet", pa.Table.from_pylist(drifted, schema=schema))
        else:
            self.write_table(ctx, "shot_tone.parquet", rows)
        bright = sum(r["tone"] == "bright" for r in rows)
        return StageResult(outputs=["shot_tone.parquet"], summary=f"{bright} bright, {len(rows) - bright} dark shots")
