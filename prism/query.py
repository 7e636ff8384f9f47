"""SQL over the catalogue-wide tables of a local output directory, with DuckDB (``prism query``).

Each folder of ``<out>/tables/`` is a view of the same name (``shots``, ``cues``, ``titles``, ...), so the
SQL a consumer runs in Athena against the Glue tables runs here unchanged. Titles processed before the
tables existed (or whose table files were lost) are brought up to date from their manifests first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism import tables
from prism.artifacts import TITLES_DIR, read_manifest
from prism.errors import ConfigError

log = logging.getLogger(__name__)

# The questions consumers ask, as they run in Athena and in `prism query` (docs/artifacts.md lists them).
WORKED_QUERIES: dict[str, str] = {
    "black_or_frozen_inside_programme": """
        SELECT c.title_id, c.cue_type, c.start_s, c.end_s
        FROM cues c JOIN titles t ON t.title_id = c.title_id
        WHERE c.cue_type IN ('black', 'frozen') AND c.start_s > 1.0 AND c.end_s < t.duration_s - 1.0
        ORDER BY c.title_id, c.start_s""",
    "korean_loudness_off_target": """
        SELECT title_id, integrated_lufs, true_peak_dbtp
        FROM titles
        WHERE language = 'ko' AND (integrated_lufs IS NULL OR abs(integrated_lufs - (-24.0)) > 2.0)
        ORDER BY title_id""",
    "long_shots_with_speech": """
        SELECT s.title_id, s.shot_index, s.start_s, s.end_s,
               sum(least(s.end_s, a.end_s) - greatest(s.start_s, a.start_s)) AS speech_s
        FROM shots s JOIN audio_segments a
          ON a.title_id = s.title_id AND a.label = 'speech' AND a.start_s < s.end_s AND a.end_s > s.start_s
        WHERE s.duration_s > 10.0
        GROUP BY s.title_id, s.shot_index, s.start_s, s.end_s
        ORDER BY s.title_id, s.shot_index""",
    "poster_candidates_with_one_large_face": """
        SELECT title_id, rank, time_s, largest_face_share, path
        FROM poster_candidates
        WHERE face_count = 1 AND largest_face_share >= 0.05
        ORDER BY title_id, rank""",
    "qc_failures": """
        SELECT title_id, rule, start_tc, end_tc, value, unit
        FROM qc_findings
        WHERE severity = 'fail'
        ORDER BY title_id, start_s, rule""",
}


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def refresh(out_dir: Path) -> int:
    """Write table files for every title whose ``titles`` row is missing or older than its manifest."""
    written = 0
    for manifest_path in sorted((out_dir / TITLES_DIR).glob("*/manifest.json")):
        tdir = manifest_path.parent
        row = out_dir / tables.table_key(tables.TITLES_TABLE, tdir.name)
        if row.exists() and row.stat().st_mtime_ns >= manifest_path.stat().st_mtime_ns:
            continue
        try:
            manifest = read_manifest(tdir)
        except ValueError as exc:
            log.warning("%s: damaged manifest, its tables are not refreshed: %s", manifest_path, exc)
            continue
        if manifest is None:
            continue
        tables.write_local(out_dir, tdir, manifest)
        written += 1
    return written


def connect(out_dir: Path):
    """A DuckDB connection with one view per table folder under ``<out>/tables/``."""
    import duckdb

    root = out_dir / tables.TABLES_DIR
    con = duckdb.connect()
    for folder in sorted(p for p in root.glob("*") if p.is_dir() and any(p.glob("*.parquet"))):
        pattern = str(folder / "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW \"{folder.name}\" AS SELECT * FROM read_parquet('{pattern}', union_by_name=true)")
    return con


def run_query(out_dir: Path, sql: str) -> QueryResult:
    """Run one SQL statement over the local tables; a bad statement is a ``ConfigError`` naming DuckDB's reason."""
    import duckdb

    if not (out_dir / TITLES_DIR).is_dir():
        raise ConfigError(f"{out_dir}: no processed titles here (run `prism run` first or pass --out)")
    refresh(out_dir)
    con = connect(out_dir)
    try:
        cursor = con.execute(sql)
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {str(exc).splitlines()[0]}") from exc
    columns = [d[0] for d in cursor.description or []]
    return QueryResult(columns, cursor.fetchall() if columns else [])
