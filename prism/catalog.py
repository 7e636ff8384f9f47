"""The catalog: per title and per stage, what ran, with which model and params, and how it ended.

``Catalog`` is the interface; ``SQLiteCatalog`` is the embedded one a laptop run uses. The
cloud swaps in a DynamoDB implementation with the same records (see ``prism.cloud``).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from prism.errors import StorageError, safe_text


@dataclass
class TitleRecord:
    title_id: str
    source_uri: str
    source_bytes: int | None
    source_sha256: str | None
    status: str  # succeeded | failed | running
    reason: str | None
    prism_version: str
    updated_at: str


@dataclass
class StageRecord:
    title_id: str
    stage: str
    status: str  # succeeded | failed | skipped
    reason: str | None
    model_name: str | None
    model_version: str | None
    params_hash: str | None
    fingerprint: str | None
    source_sha256: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    prism_version: str
    outputs: list[str] = field(default_factory=list)


class Catalog(Protocol):
    def put_title(self, record: TitleRecord) -> None: ...
    def get_title(self, title_id: str) -> TitleRecord | None: ...
    def list_titles(self) -> list[TitleRecord]: ...
    def put_stage(self, record: StageRecord) -> None: ...
    def get_stage(self, title_id: str, stage: str) -> StageRecord | None: ...
    def list_stages(self, title_id: str) -> list[StageRecord]: ...


def _columns(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _bindable(values: Iterable[Any]) -> list[Any]:
    """SQLite takes only valid UTF-8: a non-UTF-8 file name in a path or reason is stored escaped."""
    return [safe_text(v) if isinstance(v, str) else v for v in values]


def _storage_errors(method):
    """sqlite3 and OS errors become one-line StorageErrors naming the catalog file."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"catalog {self.path}: {_describe(exc)}") from exc

    return wrapper


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
        return f"{text} (corrupt or not a catalog; move it aside to start a new one)"
    return text


class SQLiteCatalog:
    """SQLite in WAL mode: safe to read (``prism status``) while a run writes.

    Every failure (corrupt file, read-only directory, disk full) surfaces as a StorageError
    with a one-line reason, never a raw sqlite3 traceback.
    """

    @_storage_errors
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS titles (title_id TEXT PRIMARY KEY, source_uri TEXT, "
                "source_bytes INTEGER, source_sha256 TEXT, status TEXT, reason TEXT, "
                "prism_version TEXT, updated_at TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS stages (title_id TEXT, stage TEXT, status TEXT, reason TEXT, "
                "model_name TEXT, model_version TEXT, params_hash TEXT, fingerprint TEXT, "
                "source_sha256 TEXT, started_at TEXT, finished_at TEXT, duration_s REAL, "
                "prism_version TEXT, outputs TEXT, PRIMARY KEY (title_id, stage))"
            )
            # the hash cache (see prism.runner.sha256_file); replaces source_hashes, which was keyed by
            # (path, size, mtime) only and so missed in-place edits that put the mtime back (cp -p, rsync -a)
            self._db.execute("DROP TABLE IF EXISTS source_hashes")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS source_digests (path TEXT PRIMARY KEY, device INTEGER, inode INTEGER, "
                "size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT)"
            )

    def close(self) -> None:
        self._db.close()

    @_storage_errors
    def _upsert(self, table: str, row: dict) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock, self._db:
            self._db.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", _bindable(row.values()))

    def put_title(self, record: TitleRecord) -> None:
        self._upsert("titles", asdict(record))

    def get_title(self, title_id: str) -> TitleRecord | None:
        rows = self._select(TitleRecord, "titles", "WHERE title_id = ?", (title_id,))
        return rows[0] if rows else None

    def list_titles(self) -> list[TitleRecord]:
        return self._select(TitleRecord, "titles", "ORDER BY title_id", ())

    def put_stage(self, record: StageRecord) -> None:
        row = asdict(record)
        row["outputs"] = json.dumps(record.outputs, ensure_ascii=False)
        self._upsert("stages", row)

    def get_stage(self, title_id: str, stage: str) -> StageRecord | None:
        rows = self._select(StageRecord, "stages", "WHERE title_id = ? AND stage = ?", (title_id, stage))
        return rows[0] if rows else None

    def list_stages(self, title_id: str) -> list[StageRecord]:
        return self._select(StageRecord, "stages", "WHERE title_id = ? ORDER BY started_at", (title_id,))

    @_storage_errors
    def _select(self, cls: type, table: str, where: str, args: tuple) -> list:
        cols = _columns(cls)
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(cols)} FROM {table} {where}", args).fetchall()
        out = []
        for row in rows:
            values = dict(zip(cols, row))
            if "outputs" in values:
                values["outputs"] = json.loads(values["outputs"] or "[]")
            out.append(cls(**values))
        return out

    @_storage_errors
    def cached_hash(self, path: Path, identity: tuple[int, int, int, int, int]) -> str | None:
        """The sha256 stored for ``path`` if its (device, inode, size, mtime_ns, ctime_ns) are the same."""
        with self._lock:
            row = self._db.execute(
                "SELECT sha256 FROM source_digests WHERE path = ? AND device = ? AND inode = ? AND size = ? "
                "AND mtime_ns = ? AND ctime_ns = ?",
                _bindable([str(path), *identity]),
            ).fetchone()
        return row[0] if row else None

    def store_hash(self, path: Path, identity: tuple[int, int, int, int, int], sha256: str) -> None:
        device, inode, size, mtime_ns, ctime_ns = identity
        self._upsert("source_digests", {"path": str(path), "device": device, "inode": inode, "size": size,
                                        "mtime_ns": mtime_ns, "ctime_ns": ctime_ns, "sha256": sha256})  # fmt: skip
