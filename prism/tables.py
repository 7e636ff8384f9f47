"""Catalogue-wide tables: each Parquet artifact as one table across titles, queryable with SQL.

``titles/<id>/`` mixes artifact types in one folder, which no table engine can target. At the end of
each title the store also writes, per Parquet artifact, ``tables/<artifact>/<title_id>.parquet``: the
same rows with a leading ``title_id`` column, plus one ``titles`` row per title (source, measured
duration, picture size, language, loudness). Locally DuckDB reads ``<out>/tables/`` (``prism query``);
in AWS the same prefix of the artifacts bucket backs one Glue table per artifact, queried with Athena.

Why one file per title and no partition key: title ids are free-form, so partition projection cannot
enumerate them (``injected`` projection demands a literal id in every query, which rules out the
catalogue-wide questions these tables exist for) and registering partitions would need a crawler or a
Glue write per title. A title's tables are small (kilobytes to a few MB); the Athena workgroup caps the
bytes a query may scan, and Parquet column statistics let ``WHERE title_id = ...`` skip other files' row
groups.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prism.artifacts import atomic_write_bytes, temporaries
from prism.contract import TABLES_PREFIX, Status

log = logging.getLogger(__name__)

TABLES_DIR = TABLES_PREFIX.rstrip("/")
TITLES_TABLE = "titles"
TITLES_SCHEMA = pa.schema(
    [
        ("title_id", pa.string()),
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),
        ("duration_s", pa.float64()),  # measured: the last shot's end, else the audio's length, else the container's
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("fps", pa.float64()),
        ("audio_tracks", pa.int32()),
        ("language", pa.string()),  # the transcript's language (ISO 639-1), null without speech
        ("language_probability", pa.float64()),
        ("integrated_lufs", pa.float64()),  # EBU R128, the first audio track
        ("true_peak_dbtp", pa.float64()),
        ("lra_lu", pa.float64()),
        ("stages_succeeded", pa.list_(pa.string())),
        ("updated_at", pa.string()),
    ],
    metadata={"prism.artifact": "titles", "prism.artifact_version": "1"},
)


def table_key(artifact: str, title_id: str) -> str:
    """``tables/<artifact>/<title_id>.parquet``: the one place a title's rows of one table live."""
    return f"{TABLES_PREFIX}{artifact}/{title_id}.parquet"


def parquet_artifacts(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(artifact name, output file) for every Parquet output of every succeeded stage in the manifest."""
    for entry in manifest.get("stages", {}).values():
        if entry.get("status") != Status.SUCCEEDED:
            continue
        for rel in entry.get("outputs", []):
            if "/" not in rel and rel.endswith(".parquet"):
                yield rel.removesuffix(".parquet"), rel


def with_title_id(path: Path, title_id: str) -> pa.Table:
    """An artifact's rows with ``title_id`` prepended (its schema metadata kept)."""
    table = pq.read_table(path)
    if "title_id" in table.column_names:
        table = table.drop_columns(["title_id"])
    return table.add_column(0, pa.field("title_id", pa.string()), pa.array([title_id] * table.num_rows, pa.string()))


def title_row(title_dir: Path, manifest: dict[str, Any]) -> pa.Table:
    """The ``titles`` table's row for one title, from its manifest and the files its stages wrote."""
    source = manifest.get("source") or {}
    probe = source.get("probe") or {}
    video = probe.get("video") or {}
    transcript = _json(title_dir / "transcript.json")
    loudness = _json(title_dir / "loudness.json")
    tracks = (loudness or {}).get("tracks") or []
    first = tracks[0] if tracks else {}
    duration = _shots_end(title_dir) or (transcript or {}).get("duration_s") or probe.get("duration_s")
    stages = manifest.get("stages", {})
    row = {
        "title_id": manifest["title_id"],
        "source_uri": source.get("uri"),
        "source_sha256": source.get("sha256"),
        "duration_s": duration,
        "width": video.get("width"),
        "height": video.get("height"),
        "fps": video.get("fps"),
        "audio_tracks": len(probe.get("audio_tracks") or []) if probe else None,
        "language": (transcript or {}).get("language"),
        "language_probability": (transcript or {}).get("language_probability"),
        "integrated_lufs": first.get("integrated_lufs"),
        "true_peak_dbtp": first.get("true_peak_dbtp"),
        "lra_lu": first.get("lra_lu"),
        "stages_succeeded": sorted(n for n, e in stages.items() if e.get("status") == Status.SUCCEEDED),
        "updated_at": manifest.get("updated_at"),
    }
    return pa.Table.from_pylist([row], schema=TITLES_SCHEMA)


def title_tables(title_dir: Path, manifest: dict[str, Any]) -> dict[str, pa.Table]:
    """Every table row set this title contributes, by table name (files missing locally are left out)."""
    title_id = manifest["title_id"]
    if not any(e.get("status") == Status.SUCCEEDED for e in manifest.get("stages", {}).values()):
        return {}  # nothing of this title is known yet: no row in any table
    tables = {TITLES_TABLE: title_row(title_dir, manifest)}
    for artifact, rel in parquet_artifacts(manifest):
        path = title_dir / rel
        if path.is_file():
            tables[artifact] = with_title_id(path, title_id)
    return tables


def to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_local(out_dir: Path, title_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Write this title's table files under ``<out>/tables/`` and drop the ones its stages no longer have."""
    title_id = manifest["title_id"]
    tables = title_tables(title_dir, manifest)
    for name, table in tables.items():
        atomic_write_bytes(out_dir / table_key(name, title_id), to_bytes(table))
    for stale in (out_dir / TABLES_DIR).glob(f"*/{glob.escape(title_id)}.parquet"):
        if stale.parent.name not in tables:
            stale.unlink(missing_ok=True)
    for folder in (out_dir / TABLES_DIR).glob("*/"):
        for leftover in temporaries(folder / f"{title_id}.parquet"):  # a killed write's
            leftover.unlink(missing_ok=True)
    return sorted(tables)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _shots_end(title_dir: Path) -> float | None:
    path = title_dir / "shots.parquet"
    if not path.is_file():
        return None
    try:
        ends = pq.read_table(path, columns=["end_s"]).column("end_s").to_pylist()
    except (OSError, KeyError, pa.ArrowException) as exc:
        log.warning("%s: unreadable, the titles table uses another duration: %s", path, exc)
        return None
    return max((e for e in ends if e is not None), default=None)


def hive_type(arrow: pa.DataType) -> str:
    """The Glue/Athena column type of an Arrow type, as the Parquet SerDe reads it."""
    if pa.types.is_list(arrow) or pa.types.is_fixed_size_list(arrow) or pa.types.is_large_list(arrow):
        return f"array<{hive_type(arrow.value_type)}>"
    if pa.types.is_struct(arrow):
        return "struct<" + ",".join(f"{f.name}:{hive_type(f.type)}" for f in arrow) + ">"
    if pa.types.is_dictionary(arrow):
        return hive_type(arrow.value_type)
    if pa.types.is_timestamp(arrow):
        return "timestamp"
    for check, name in (
        (pa.types.is_boolean, "boolean"), (pa.types.is_int8, "tinyint"), (pa.types.is_int16, "smallint"),
        (pa.types.is_int32, "int"), (pa.types.is_int64, "bigint"), (pa.types.is_float32, "float"),
        (pa.types.is_float64, "double"), (pa.types.is_string, "string"), (pa.types.is_large_string, "string"),
        (pa.types.is_binary, "binary"), (pa.types.is_date32, "date"),
    ):  # fmt: skip
        if check(arrow):
            return name
    raise TypeError(f"no Glue column type for Arrow type {arrow}")


def catalogue_tables() -> dict[str, pa.Schema]:
    """Every catalogue-wide table and its schema (``title_id`` first): the stages' declared Parquet outputs, plus
    ``titles``. The Glue tables in the CDK and the docs are generated from this."""
    from prism.stages.base import registry

    found = {TITLES_TABLE: TITLES_SCHEMA}
    for cls in registry().values():
        for output in cls.outputs:
            if output.format == "parquet" and output.schema is not None and "/" not in output.path:
                schema = output.schema
                if "title_id" not in schema.names:
                    schema = schema.insert(0, pa.field("title_id", pa.string()))
                found[output.path.removesuffix(".parquet")] = schema
    return found
