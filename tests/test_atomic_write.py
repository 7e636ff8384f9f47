"""Every file Prism writes goes through one helper: temp beside it, fsync, os.replace."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prism import artifacts
from prism.artifacts import atomic_path, atomic_write_bytes, write_json, write_parquet


def test_replaces_whole_file_and_fsyncs_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "a.json"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(artifacts.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(artifacts.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_json(target, {"k": 1})
    write_parquet(tmp_path / "t.parquet", pa.table({"x": [1, 2]}))
    assert events == ["fsync", "replace", "fsync", "replace"]
    assert target.read_text() == '{\n  "k": 1\n}'
    assert pq.read_table(tmp_path / "t.parquet").column("x").to_pylist() == [1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "sub", "t.parquet"]  # no temp left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "index.faiss"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".index.faiss.tmp-")  # the runner's sweep pattern
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]
