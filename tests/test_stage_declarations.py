"""A stage's declarations (outputs and schemas, report lane, show columns) drive everything else.

The proof: ``tests/plugin_stage.py`` is one file with one class, named nowhere else; registered,
it runs through the Runner and shows up in ``prism show`` and the HTML report, and a file it writes
that drifts from its declared schema fails it with a clear reason.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prism.cli import app
from prism.errors import ArtifactSchemaError
from prism.report import render_report
from prism.runner import Runner
from prism.stages import base
from prism.stages.base import ModelInfo, Output, ReportLane, Stage, StageResult, check_schema, register, registry
from prism.synth import Shot, Title


def load_plugin():
    """tests/plugin_stage.py as a module (the suite imports test files by path, not by package)."""
    if "prism_test_plugin_stage" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "prism_test_plugin_stage", Path(__file__).with_name("plugin_stage.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["prism_test_plugin_stage"]


plugin = load_plugin()
SHOT_TONE_SCHEMA, ShotToneStage = plugin.SHOT_TONE_SCHEMA, plugin.ShotToneStage
TONE_TITLE = Title([Shot("orange", 1.5), Shot("blue", 1.5), Shot("orange", 1.5)], width=160, height=90)


@pytest.fixture(scope="module", autouse=True)
def with_plugin():
    """The registry with ``shot_tone`` added, for this module's tests only."""
    registry()  # built-ins and entry points loaded before the copy
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
        register(ShotToneStage)
        yield ShotToneStage


@pytest.fixture(scope="module")
def tone_run(with_plugin, make_video, tmp_path_factory):
    """The tone title through the Runner once: shots, then the new stage."""
    path, truth = make_video("tone.mp4", TONE_TITLE)
    out = tmp_path_factory.mktemp("tone-run")
    [outcome] = Runner(out).run([path], ["shot_tone"])
    return out, outcome, truth


def test_a_new_stage_runs_and_writes_its_declared_schema(tone_run):
    _, outcome, truth = tone_run
    assert [(s.stage, s.status) for s in outcome.stages] == [("shots", "succeeded"), ("shot_tone", "succeeded")]
    table = pq.read_table(outcome.title_dir / "shot_tone.parquet")
    assert table.schema.equals(SHOT_TONE_SCHEMA, check_metadata=True)
    rows = table.to_pylist()
    assert [r["tone"] for r in rows] == ["bright", "dark", "bright"]  # orange, blue, orange
    assert [round(r["start_s"] * truth.fps) for r in rows[1:]] == truth.cuts


def test_a_new_stage_appears_in_prism_show(tone_run):
    out, outcome, _ = tone_run
    result = CliRunner().invoke(app, ["show", outcome.title_id, "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "shot_tone.parquet (3 rows)" in result.output
    header = next(line for line in result.output.splitlines() if "tone" in line and "mean_luma" in line)
    assert re.findall(r"[a-z_]+", header) == ["shot_index", "tone", "start_s", "mean_luma"]
    assert result.output.index("shots.parquet") < result.output.index("shot_tone.parquet")  # display order, then name
    assert len(re.findall(r"\bbright\b", result.output)) == 2 and len(re.findall(r"\bdark\b", result.output)) == 1


def test_a_new_stage_appears_in_the_report(tone_run):
    _, outcome, _ = tone_run
    html = render_report(outcome.title_dir)
    svg = html[html.index('<svg id="timeline"') : html.index("</svg>")]
    assert ">tone</text>" in svg  # its lane, named by the declaration
    assert len(re.findall(r"<title>bright 00:00:0", svg)) == 2 and "<title>dark 00:00:01.5–00:00:03.0" in svg
    section = html[html.index('id="shot_tone-panel"') :]
    section = section[: section.index("</section>")]
    assert "<th>shot_index</th><th>tone</th><th>start_s</th><th>mean_luma</th>" in section
    assert section.count('class="span-row"') == 3
    assert 'data-stage="shot_tone"' in html  # and its row in the stages table


def test_output_that_drifts_from_its_declared_schema_fails_the_stage(tone_run, make_video, tmp_path):
    out, _, _ = tone_run
    shutil.copytree(out, tmp_path / "out")
    path, _ = make_video("tone.mp4", TONE_TITLE)
    good = (tmp_path / "out" / "titles" / "tone" / "shot_tone.parquet").read_bytes()
    [outcome] = Runner(tmp_path / "out", params={"shot_tone": {"drift": True}}).run([path], ["shot_tone"])
    assert [(s.stage, s.status) for s in outcome.stages] == [("shots", "skipped"), ("shot_tone", "failed")]
    assert outcome.stages[-1].reason == (
        "stage shot_tone: shot_tone.parquet does not match its declared schema: "
        "column 'mean_luma' is string, declared float64"
    )
    # the drifted file is never published: the one the earlier run published stays until a run succeeds
    assert (outcome.title_dir / "shot_tone.parquet").read_bytes() == good
    assert outcome.status == "failed"


def test_check_schema_names_every_difference():
    declared = pa.schema([("a", pa.int32()), ("b", pa.string())], metadata={"prism.artifact": "x"})
    check_schema("s", "x.parquet", declared, declared)
    with pytest.raises(ArtifactSchemaError, match=r"missing column\(s\) \['b'\]; undeclared column\(s\) \['c'\]"):
        check_schema("s", "x.parquet", declared, pa.schema([("a", pa.int32()), ("c", pa.string())]))
    with pytest.raises(ArtifactSchemaError, match=r"columns in order \['b', 'a'\], declared \['a', 'b'\]"):
        check_schema(
            "s",
            "x.parquet",
            declared,
            pa.schema([("b", pa.string()), ("a", pa.int32())], metadata={"prism.artifact": "x"}),
        )
    with pytest.raises(ArtifactSchemaError, match="column 'a' is int64, declared int32"):
        check_schema(
            "s",
            "x.parquet",
            declared,
            pa.schema([("a", pa.int64()), ("b", pa.string())], metadata={"prism.artifact": "x"}),
        )
    vectors = pa.schema([("v", pa.list_(pa.float32()))])
    check_schema("s", "v.parquet", vectors, pa.schema([("v", pa.list_(pa.float32(), 512))]))  # any fixed size
    with pytest.raises(
        ArtifactSchemaError, match=r"column 'v' is fixed_size_list<float64>\[4\], declared list<float32>"
    ):
        check_schema("s", "v.parquet", vectors, pa.schema([("v", pa.list_(pa.float64(), 4))]))


def test_undeclared_output_fails_the_stage(monkeypatch, make_video, tmp_path):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register
    class Stray(Stage):
        name = "stray"
        outputs = (Output("stray.json", "json"),)

        def model(self):
            return ModelInfo("stray", "1")

        def run(self, ctx):
            (ctx.staging / "stray.json").write_text("{}")
            (ctx.staging / "extra.txt").write_text("x")
            return StageResult(outputs=["stray.json", "extra.txt"])

    path, _ = make_video("tone.mp4", TONE_TITLE)
    [outcome] = Runner(tmp_path).run([path], ["stray"])
    assert outcome.stages[0].status == "failed"
    assert outcome.stages[0].reason == "stage stray: extra.txt is not a declared output"


def test_contradictory_declarations_are_refused_at_registration(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    def stage(**attrs) -> type[Stage]:
        return type(
            "Bad", (Stage,), {"name": "bad", "model": lambda self: None, "run": lambda self, ctx: None, **attrs}
        )

    schema = pa.schema([("start_s", pa.float64())])
    with pytest.raises(ValueError, match=r"show names column\(s\) \['end_s'\] that x.parquet does not declare"):
        register(stage(outputs=(Output("x.parquet", "parquet", schema, show=("start_s", "end_s")),)))
    with pytest.raises(ValueError, match="report_lane reads y.parquet, which is not a declared Parquet output"):
        register(stage(outputs=(Output("x.parquet", "parquet", schema),), report_lane=ReportLane(output="y.parquet")))
    with pytest.raises(ValueError, match="a Parquet output declares its schema"):
        Output("x.parquet", "parquet")
    with pytest.raises(ValueError, match="report lane kind"):
        ReportLane(output="x.parquet", kind="waveform")
    assert "bad" not in registry()


def test_minimal_stage_needs_no_declarations(monkeypatch, make_video, tmp_path):
    """The base-class defaults: nothing declared, nothing checked, no lane, nothing shown."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register
    class Bare(Stage):
        name = "bare"

        def model(self):
            return ModelInfo("bare", "1")

        def run(self, ctx):
            (ctx.staging / "anything.bin").write_bytes(b"\0")
            return StageResult(outputs=["anything.bin"])

    path, _ = make_video("tone.mp4", TONE_TITLE)
    [outcome] = Runner(tmp_path).run([path], ["bare"])
    assert outcome.status == "succeeded"
    assert Bare.outputs == () and Bare.report_lane is None and Bare.display_order == 100
    html = render_report(outcome.title_dir)
    assert 'data-stage="bare"' in html and 'id="bare-panel"' not in html
    # a registered stage with a lane that did not run: said on its lane, in its section and in the stages table
    assert html.count("shot_tone not run") == 2
    assert '<tr class="stage-row" data-stage="shot_tone"><td>shot_tone</td><td class="status muted">not run' in html


def test_built_in_stages_declare_what_they_write(sample_run):
    """Every file the built-in stages listed on the sample is declared, each Parquet with its declared schema."""
    _, _, outcome = sample_run
    stages = registry()
    manifest = json.loads((outcome.title_dir / "manifest.json").read_text())
    checked = 0
    for name, entry in manifest["stages"].items():
        for rel in entry["outputs"]:
            declared = stages[name].output(rel)  # KeyError: an undeclared file
            if declared.schema is not None:
                assert pq.read_schema(outcome.title_dir / rel).equals(declared.schema, check_metadata=True), rel
                checked += 1
    assert checked == 4  # shots, shot_scores, keyframes, cues
