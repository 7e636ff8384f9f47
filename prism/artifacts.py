"""The artifacts contract: where a title's files live, how they are written, and the manifest.

One module owns the layout so the local run and S3 agree: ``titles/<title_id>/`` holds
``manifest.json`` plus each stage's outputs. Every file is written to a temporary name in the
same directory and renamed into place, so a reader never sees half a file; the manifest is
written after the files it lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from prism.catalog import StageRecord
from prism.contract import TITLE_FAILED, TITLE_PREPROCESSED, TITLES_PREFIX, Status
from prism.errors import StorageError

SCHEMA_VERSION = "1.0"
MANIFEST = "manifest.json"
TITLES_DIR = TITLES_PREFIX.rstrip("/")
STAGING_DIR = ".staging"
WORK_DIR = ".work"  # <out>/.work/<title_id>/: a run's scratch decodes, removed after it
LOCKS_DIR = ".locks"  # <out>/.locks/<title_id>.lock: one process writes a title at a time
JOURNAL_PREFIX = ".publishing-"  # <title_dir>/.publishing-<stage>.json while a stage's files change
STATUSES = tuple(s.value for s in Status)
# UTF-8 bytes; a longer id is cut (see title_id_for). The longest name made from an id is the
# report's temporary ".<id>.html.tmp-XXXXXXXX": 19 bytes more, within NAME_MAX (255); ids up to
# this length are as they always were
TITLE_ID_MAX_BYTES = 236


BLOCKED_PREFIX = "upstream stage(s) "


def blocked_reason(stages: list[str]) -> str:
    """The reason of a stage ``blocked`` because stages it requires did not succeed (the title fails)."""
    return f"{BLOCKED_PREFIX}{stages} did not succeed"


def is_blocked(entry: dict[str, Any]) -> bool:
    """Whether a manifest stage entry (or record) did not run because a stage it requires did not succeed.

    Releases up to 0.1.0 wrote such a stage ``skipped`` with a reason starting ``upstream stage(s)``;
    those records still count, so a title recorded by an older worker finalizes the same way.
    """
    status = entry.get("status")
    return status == Status.BLOCKED or (
        status == Status.SKIPPED and (entry.get("reason") or "").startswith(BLOCKED_PREFIX)
    )


@dataclass
class StageEntry:
    """How one stage of a title ended: its manifest entry, from which its catalog record is derived.

    The one shape of a stage's end on every side: the runner builds it, the manifest stores
    ``to_manifest()``, the catalogs store ``to_record()``, and ``finalize`` / ``record_failure``
    turn a record back into an entry with ``from_record()``.
    """

    status: str  # a Status value
    reason: str | None = None
    model: dict[str, str] | None = None  # {"name", "version"}
    params: dict[str, Any] = field(default_factory=dict)
    params_hash: str | None = None
    fingerprint: str | None = None
    outputs: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # output -> {"bytes", "sha256"}
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status).value  # an unknown status is a bug at the writer, not in a reader

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> StageEntry:
        known = {k: v for k, v in entry.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "outputs": list(known.get("outputs") or []), "files": dict(known.get("files") or {})})

    def to_record(self, title_id: str, stage: str, source_sha256: str | None, prism_version: str) -> StageRecord:
        model = self.model or {}
        return StageRecord(
            title_id=title_id, stage=stage, status=self.status, reason=self.reason, model_name=model.get("name"),
            model_version=model.get("version"), params_hash=self.params_hash, fingerprint=self.fingerprint,
            source_sha256=source_sha256, started_at=self.started_at, finished_at=self.finished_at,
            duration_s=self.duration_s, prism_version=prism_version, outputs=list(self.outputs),
        )  # fmt: skip

    @classmethod
    def from_record(cls, record: StageRecord | dict[str, Any]) -> StageEntry:
        """The entry a record stands for when none was stored with it (``record_failure`` writes bare records)."""
        r = record if isinstance(record, dict) else asdict(record)
        status = r["status"]
        return cls(
            status=status, reason=r.get("reason") or (None if status == Status.SUCCEEDED else f"stage {r['stage']} {status}"),
            model={"name": r["model_name"], "version": r["model_version"]} if r.get("model_name") else None,
            params_hash=r.get("params_hash"), fingerprint=r.get("fingerprint"),
            outputs=list(r.get("outputs") or []) if status == Status.SUCCEEDED else [],
            started_at=r.get("started_at"), finished_at=r.get("finished_at"), duration_s=r.get("duration_s") or 0.0,
        )  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def title_id_for(path: str | Path) -> str:
    """A stable, S3-safe title id from a file name: NFC letters/digits kept (Korean too), the rest '-'."""
    stem = unicodedata.normalize("NFC", Path(path).stem)
    slug = re.sub(r"[^\w.-]+", "-", stem, flags=re.UNICODE).strip("-.") or "untitled"
    if len(slug.encode()) <= TITLE_ID_MAX_BYTES:
        return slug
    # a long (legal, up to 255-byte) file name: the id must leave room in a NAME_MAX for
    # "<id>.lock", "<id>.html" and atomic writes' ".<name>.tmp-XXXXXXXX"; the digest keeps it unique
    digest = hashlib.sha256(os.fsencode(Path(path).name)).hexdigest()[:12]
    head = slug.encode()[: TITLE_ID_MAX_BYTES - len(digest) - 1].decode(errors="ignore").rstrip("-.")
    return f"{head}-{digest}"


def title_dir(out_dir: str | Path, title_id: str) -> Path:
    return Path(out_dir) / TITLES_DIR / title_id


NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def _tmp_prefix(path: Path) -> str:
    """``.<name>.tmp-``; where that and its 8-character suffix would pass NAME_MAX (a table file named after
    a long title id), ``.<digest of the name>.tmp-``: still one writer's, still swept as ``.*.tmp-*``."""
    prefix = f".{path.name}.tmp-"
    if len(os.fsencode(prefix)) + 8 > NAME_MAX:
        prefix = f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]}.tmp-"
    return prefix


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{_tmp_prefix(path)}{uuid.uuid4().hex[:8]}")


def temporaries(path: Path) -> list[Path]:
    """What killed atomic writes of ``path`` left beside it."""
    prefix = _tmp_prefix(path)
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if p.name.startswith(prefix)]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The one way Prism writes a file: yield a temporary name beside ``path`` for any writer
    (bytes, pyarrow, faiss), then fsync it and ``os.replace`` it onto ``path``.

    A reader sees the old file or the whole new one, never half; a crash or an exception leaves
    at most a ``.<name>.tmp-*`` file (removed here on an exception, swept by the runner after a
    crash). Same directory, so the rename never crosses a filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:  # durable before it becomes visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        path, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")
    )


def write_parquet(path: Path, table: Any) -> None:
    """Write a pyarrow Table atomically (zstd; readable by pandas, pyarrow, DuckDB, Athena)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def publish(staging: Path, destination: Path, outputs: list[str]) -> None:
    """Move a stage's staged files into the title directory: nested files first, indexes last."""
    ordered = sorted(outputs, key=lambda rel: (rel.count("/") == 0, rel))
    for rel in ordered:
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target)


def file_facts(path: Path) -> dict[str, Any]:
    """Size and sha256 of an artifact, recorded in the manifest so a rerun can tell it is intact."""
    import hashlib

    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def outputs_intact(directory: Path, entry: dict[str, Any]) -> bool:
    """Whether every output a manifest stage entry lists is there with the size and hash it recorded.

    Entries written before hashes were recorded (no ``files``) are checked for existence only.
    """
    files = entry.get("files") or {}
    for rel in entry.get("outputs", []):
        path = directory / rel
        if not path.is_file():
            return False
        facts = files.get(rel)
        if facts and (path.stat().st_size != facts["bytes"] or file_facts(path)["sha256"] != facts["sha256"]):
            return False
    return True


def remove_outputs(directory: Path, relatives: list[str] | set[str]) -> None:
    """Delete artifacts no manifest entry lists any more, and the folders they leave empty."""
    for rel in sorted(relatives):
        path = directory / rel
        path.unlink(missing_ok=True)
        remove_empty_dirs(path.parent, directory)


def remove_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents up to (not including) ``stop`` while they are empty."""
    while directory != stop and directory.is_relative_to(stop):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def listed_outputs(manifest: dict[str, Any] | None) -> set[str]:
    return {rel for entry in (manifest or {}).get("stages", {}).values() for rel in entry.get("outputs", [])}


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_manifest_checked(directory: Path) -> dict[str, Any] | None:
    """``read_manifest`` for readers (``prism show``, the report): None when there is none, and a
    damaged one (not JSON, cut short, without its stages) a StorageError naming the file."""
    path = directory / MANIFEST
    try:
        manifest = read_manifest(directory)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise StorageError(f"{path}: damaged manifest ({exc}); `prism run` on its source rebuilds it") from exc
    if manifest is None:
        return None
    stages = manifest.get("stages") if isinstance(manifest, dict) else None
    if not isinstance(stages, dict) or not all(isinstance(e, dict) and "status" in e for e in stages.values()):
        raise StorageError(f"{path}: damaged manifest (no valid stages); `prism run` on its source rebuilds it")
    return manifest


def new_manifest(title_id: str, source: dict[str, Any], prism_version: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "title_id": title_id,
        "prism_version": prism_version,
        "created_at": now_iso(),
        "updated_at": now_iso(),
        "source": source,
        "stages": {},
    }


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "schemas" / "manifest.schema.json").read_text())


EVENT_SCHEMAS = {TITLE_PREPROCESSED: "title-preprocessed", TITLE_FAILED: "title-failed"}  # detail-type -> file


@lru_cache(maxsize=4)
def event_schema(detail_type: str) -> dict[str, Any]:
    """The JSON Schema (draft 4, as EventBridge's schema registry takes it) of one event Prism emits."""
    name = EVENT_SCHEMAS[detail_type]
    return json.loads((Path(__file__).parent / "schemas" / "events" / f"{name}.schema.json").read_text())


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when ``manifest`` breaks the v1 contract."""
    import jsonschema

    jsonschema.validate(manifest, manifest_schema())
