"""Catalogue-wide tables and `prism query`: the worked queries answer what the titles hold."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prism import tables
from prism.artifacts import new_manifest, write_json
from prism.cli import app
from prism.errors import ConfigError
from prism.query import WORKED_QUERIES, refresh, run_query
from prism.stages.audio import SEGMENTS_SCHEMA
from prism.stages.posters import POSTER_CANDIDATES_SCHEMA
from prism.stages.qc import QC_FINDINGS_SCHEMA
from prism.stages.shots import SHOTS_SCHEMA


def test_sample_run_writes_tables_and_black_frozen_query_finds_truth(sample_run, tmp_path):
    src, truth, outcome = sample_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    for name in ("shots", "keyframes", "cues", "titles"):
        assert (out / tables.table_key(name, outcome.title_id)).is_file(), name
    row = pq.read_table(out / tables.table_key("titles", outcome.title_id)).to_pylist()[0]
    assert row["duration_s"] == pytest.approx(truth.frame_count / truth.fps, abs=0.1)
    assert row["stages_succeeded"] == ["cues", "keyframes", "shots"]

    result = run_query(out, WORKED_QUERIES["black_or_frozen_inside_programme"])
    found = sorted((r[1], r[2], r[3]) for r in result.rows)
    expected = sorted(
        [("black", a / truth.fps, b / truth.fps) for a, b in truth.black]
        + [("frozen", a / truth.fps, b / truth.fps) for a, b in truth.frozen]
    )
    assert [f[0] for f in found] == [e[0] for e in expected]
    for (_, fs, fe), (_, es, ee) in zip(found, expected):
        assert fs == pytest.approx(es, abs=0.2) and fe == pytest.approx(ee, abs=0.2)
    shots = run_query(out, "SELECT count(*), min(title_id) FROM shots").rows[0]
    assert shots == (len(truth.cuts) + len(truth.gradual) + 1, outcome.title_id)


def _title(out, title_id, *, language, lufs, shots, speech, findings=(), posters=()):
    """A processed title's files as the stages write them (their schemas), for the SQL over them."""
    tdir = out / "titles" / title_id
    tdir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(shots, schema=SHOTS_SCHEMA), tdir / "shots.parquet")
    pq.write_table(pa.Table.from_pylist(speech, schema=SEGMENTS_SCHEMA), tdir / "audio_segments.parquet")
    pq.write_table(pa.Table.from_pylist(list(findings), schema=QC_FINDINGS_SCHEMA), tdir / "qc_findings.parquet")
    rows = [{name: None for name in POSTER_CANDIDATES_SCHEMA.names} | p for p in posters]
    pq.write_table(pa.Table.from_pylist(rows, schema=POSTER_CANDIDATES_SCHEMA), tdir / "poster_candidates.parquet")
    write_json(tdir / "transcript.json", {"language": language, "language_probability": 0.9, "duration_s": 30.0})
    write_json(tdir / "loudness.json", {"tracks": [{"integrated_lufs": lufs, "true_peak_dbtp": -3.0, "lra_lu": 5}]})
    manifest = new_manifest(title_id, {"uri": f"/media/{title_id}.mp4", "sha256": "0" * 64, "probe": None}, "0")
    for stage, files in {"shots": ["shots.parquet"], "audio": ["audio_segments.parquet", "transcript.json"],
                         "qc": ["qc_findings.parquet"], "posters": ["poster_candidates.parquet"]}.items():  # fmt: skip
        manifest["stages"][stage] = {"status": "succeeded", "outputs": files}
    write_json(tdir / "manifest.json", manifest)


def _shot(i, start, end):
    return {"shot_index": i, "start_frame": int(start * 25), "end_frame": int(end * 25), "start_s": start,
            "end_s": end, "duration_s": end - start, "transition_in": "cut", "score": 0.9,
            "transition_start_frame": None, "transition_end_frame": None}  # fmt: skip


def _speech(start, end, label="speech"):
    return {"track": 0, "label": label, "start_s": start, "end_s": end, "duration_s": end - start, "level_dbfs": -20}


def _finding(rule, severity, start, end):
    return {"check": rule, "rule": rule, "severity": severity, "start_s": start, "end_s": end,
            "duration_s": end - start, "start_tc": f"tc{start}", "end_tc": f"tc{end}", "value": None, "unit": ""}  # fmt: skip


def _poster(rank, faces, share):
    return {"rank": rank, "time_s": 10.0 * rank, "face_count": faces, "largest_face_share": share,
            "path": f"posters/{rank}.jpg"}  # fmt: skip


def test_worked_queries_over_titles_with_audio(tmp_path):
    out = tmp_path / "out"
    _title(out, "drama-ko", language="ko", lufs=-19.5,
           shots=[_shot(0, 0, 4), _shot(1, 4, 16), _shot(2, 16, 30)],
           speech=[_speech(5, 7), _speech(8, 9.5), _speech(20, 22, "music")],
           findings=[_finding("colour_bars_in_programme", "fail", 7.5, 11.5), _finding("black", "info", 0, 1),
                     _finding("loudness_integrated", "fail", 0, 30)],
           posters=[_poster(1, 1, 0.12), _poster(2, 2, 0.2), _poster(3, 1, 0.01), _poster(4, 1, 0.3)])  # fmt: skip
    _title(out, "docu-ko", language="ko", lufs=-24.4, shots=[_shot(0, 0, 30)], speech=[_speech(0, 3, "music")])
    _title(out, "film-en", language="en", lufs=-30.0, shots=[_shot(0, 0, 12)], speech=[_speech(1, 2)])
    assert refresh(out) == 3 and refresh(out) == 0  # up to date: nothing rewritten

    korean = run_query(out, WORKED_QUERIES["korean_loudness_off_target"]).rows
    assert korean == [("drama-ko", -19.5, -3.0)]
    long_speech = run_query(out, WORKED_QUERIES["long_shots_with_speech"]).rows
    assert [(r[0], r[1], round(r[4], 3)) for r in long_speech] == [("drama-ko", 1, 3.5), ("film-en", 0, 1.0)]
    faces = run_query(out, WORKED_QUERIES["poster_candidates_with_one_large_face"]).rows
    assert [(r[0], r[1]) for r in faces] == [("drama-ko", 1), ("drama-ko", 4)]
    failures = run_query(out, WORKED_QUERIES["qc_failures"]).rows
    assert [(r[0], r[1]) for r in failures] == [
        ("drama-ko", "loudness_integrated"),
        ("drama-ko", "colour_bars_in_programme"),
    ]


def test_stale_table_files_follow_the_manifest(tmp_path):
    out = tmp_path / "out"
    _title(out, "t1", language="en", lufs=-23, shots=[_shot(0, 0, 5)], speech=[])
    refresh(out)
    assert (out / tables.table_key("audio_segments", "t1")).exists()
    manifest = json.loads((out / "titles/t1/manifest.json").read_text())
    manifest["stages"]["audio"]["status"] = "failed"
    tables.write_local(out, out / "titles/t1", manifest)
    assert not (out / tables.table_key("audio_segments", "t1")).exists()
    assert (out / tables.table_key("shots", "t1")).exists()
    killed = out / "tables" / "shots" / ".t1.parquet.tmp-0badc0de"  # what a write killed midway leaves
    killed.write_bytes(b"PAR1")
    tables.write_local(out, out / "titles/t1", manifest)
    assert not killed.exists()


def test_query_cli_and_errors(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="no processed titles"):
        run_query(out, "SELECT 1")
    _title(out, "t1", language="en", lufs=-23, shots=[_shot(0, 0, 5)], speech=[])
    cli = CliRunner()
    ok = cli.invoke(app, ["query", "SELECT title_id, language FROM titles", "--out", str(out), "--format", "csv"])
    assert ok.exit_code == 0 and ok.stdout.splitlines() == ["title_id,language", "t1,en"]
    bad = cli.invoke(app, ["query", "SELECT nope FROM titles", "--out", str(out)])
    assert bad.exit_code == 2 and "query failed" in bad.output and "Traceback" not in bad.output
