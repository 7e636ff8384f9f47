"""Two cheap test-only stages, ``parts`` -> ``tally``, shared by in-process tests and subprocess runs.

``parts`` writes ``count`` files one after another (``delay_s`` apart, like a stage writing
keyframes) plus an index; ``tally`` reads the index. They exercise the runner's own logic in
milliseconds. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from prism.artifacts import write_parquet
from prism.stages.base import ModelInfo, Stage, StageResult, register


@dataclass(frozen=True)
class PartsParams:
    count: int = 2
    label: str = "a"
    delay_s: float = 0.0


def register_cheap_stages() -> list[str]:
    """Register both stages (the caller isolates the registry) and return the run order."""

    @register
    class Parts(Stage):
        name = "parts"
        Params = PartsParams
        execution_params = frozenset({"delay_s"})

        def model(self):
            return ModelInfo("parts", "1")

        def run(self, ctx):
            p = self.params
            names = [f"parts/{p.label}-{i}.txt" for i in range(p.count)]
            (ctx.staging / "parts").mkdir()
            for i, rel in enumerate(names):
                time.sleep(p.delay_s)
                (ctx.staging / rel).write_text(f"{p.label}:{i}:{ctx.info.duration_s:.3f}")
            write_parquet(ctx.staging / "parts.parquet", pa.table({"path": names, "label": [p.label] * p.count}))
            return StageResult(outputs=[*names, "parts.parquet"], summary=f"{p.count} parts")

    @register
    class Tally(Stage):
        name = "tally"
        requires = ("parts",)

        def model(self):
            return ModelInfo("tally", "1")

        def run(self, ctx):
            parts = ctx.read_table("parts.parquet").to_pydict()
            labels = sorted(set(parts["label"]))
            write_parquet(ctx.staging / "tally.parquet", pa.table({"count": [len(parts["path"])], "labels": [labels]}))
            return StageResult(outputs=["tally.parquet"], summary=f"{len(parts['path'])} parts")

    return ["parts", "tally"]
