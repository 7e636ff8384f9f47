"""docs/artifacts.md against the stage declarations: every declared output of a built-in stage is
in the layout and documented, and every Parquet table lists exactly the declared columns and types.

The docs keep their prose (what each column means); the names and types are checked here, so a
stage whose schema changes without its documentation fails this test, not a downstream consumer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from prism.stages.base import Output, Stage, registry, type_name

DOC = Path(__file__).resolve().parents[1] / "docs" / "artifacts.md"


def built_in_stages() -> list[type[Stage]]:
    return [cls for cls in registry().values() if cls.__module__.startswith("prism.stages.")]


def _block(lines: list[str], name: str) -> list[str] | None:
    """The lines documenting ``name``: from its heading (``## name``, ``**`name`**``, ``\\`name\\`:``) to the next."""

    def starts(line: str, file: str | None = None) -> bool:
        f = re.escape(file) if file else r"[^`]+"
        return bool(re.match(rf"(##.*`?{f}|\*\*`{f}`\*\*|`{f}`:)", line)) and (file is None or file in line)

    for i, line in enumerate(lines):
        if starts(line, name):
            end = next(
                (j for j in range(i + 1, len(lines)) if starts(lines[j]) or lines[j].startswith("**")), len(lines)
            )
            return lines[i:end]
    return None


def _doc_type(text: str) -> str:
    return re.sub(r"fixed_size_list<(\w+)>\[\w+\]", r"list<\1>", text.strip())


def _table_columns(block: list[str]) -> dict[str, str] | None:
    """column -> documented type, from the first ``| column | type | meaning |`` table of the block."""
    rows = [line for line in block if line.startswith("|")]
    if not rows:
        return None
    columns: dict[str, str] = {}
    for row in rows[2:]:  # header and separator first
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        types = [_doc_type(t) for t in re.split(r",\s*(?![^<\[]*[>\]])", cells[1])]
        if len(types) == 1:
            types *= len(names)
        columns.update(zip(names, types, strict=True))
    return columns


def doc_problems(text: str, stages: list[type[Stage]]) -> list[str]:
    lines = text.splitlines()
    layout = text[text.index("```") : text.index("```", text.index("```") + 3)]
    problems = []
    for cls in stages:
        for output in cls.outputs:
            listed = output.path.split("*")[0] if "*" in output.path else output.path
            if listed not in layout:
                problems.append(f"{cls.name}: {output.path} is not in the layout block")
            if output.schema is None:
                continue
            block = _block(lines, output.path)
            if block is None:
                problems.append(f"{cls.name}: {output.path} has no section")
                continue
            problems += _schema_problems(cls.name, output, block)
    return problems


def _schema_problems(stage: str, output: Output, block: list[str]) -> list[str]:
    declared = {f.name: type_name(f.type) for f in output.schema}
    documented = _table_columns(block)
    if documented is None:  # a prose line naming the columns
        mentioned = set(re.findall(r"`([^`]+)`", " ".join(block)))
        return [f"{stage}: {output.path} column {c} is not documented" for c in declared if c not in mentioned]
    problems = [f"{stage}: {output.path} column {c} is not documented" for c in declared if c not in documented]
    problems += [
        f"{stage}: {output.path} documents {c}, which it does not declare" for c in documented if c not in declared
    ]
    problems += [
        f"{stage}: {output.path} column {c} is documented as {documented[c]}, declared {t}"
        for c, t in declared.items()
        if c in documented and documented[c] != t
    ]
    return problems


def test_docs_tables_match_the_declared_outputs():
    stages = built_in_stages()
    assert {cls.name for cls in stages} >= {"shots", "keyframes", "cues", "audio", "embeddings"}
    assert doc_problems(DOC.read_text(encoding="utf-8"), stages) == []


def test_the_docs_check_catches_drift():
    text = DOC.read_text(encoding="utf-8")
    by_name = {cls.name: cls for cls in built_in_stages()}
    retyped = text.replace("| `turn_index` | int32 |", "| `turn_index` | int64 |")
    assert doc_problems(retyped, [by_name["audio"]]) == [
        "audio: speakers.parquet column turn_index is documented as int64, declared int32"
    ]
    renamed = text.replace("`transition_extent_prob` (all-frames head)", "`extent_prob` (all-frames head)")
    assert doc_problems(renamed, [by_name["shots"]]) == [
        "shots: shot_scores.parquet column transition_extent_prob is not documented"
    ]

    class Posters(Stage):
        name = "posters"
        outputs = (Output("posters.parquet", "parquet", pa.schema([("shot_index", pa.int32())])),)

    assert doc_problems(text, [Posters]) == [
        "posters: posters.parquet is not in the layout block",
        "posters: posters.parquet has no section",
    ]
