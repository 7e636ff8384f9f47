"""``S3Store``: a title's stages in the artifacts bucket and the DynamoDB catalog, for the Batch worker.

The same :class:`prism.store.TitleStore` contract as ``LocalStore``, so the worker runs the one
``Runner`` (its planning, its up-to-date rule) instead of re-deriving them:

- ``load``: the title's stage records; each carries its manifest entry (the worker writes them,
  ``record_failure`` writes records without one). Jobs of a title run in parallel, so no job
  writes ``manifest.json``: ``finalize`` assembles it from these records once all have finished.
- ``outputs_intact``: every listed key exists, from one ListObjectsV2 listing per title (not a
  HeadObject per file: see :func:`prism.cloud.s3.existing_keys`).
- ``publish``: into the local ``title_dir`` (a later stage of the job reads it there), then one
  PUT per file, nested files first and indexes last; ``record``: the stage record with its
  manifest entry, after the files; ``remove``: objects no entry lists any more, after the record of a rerun that succeeded.
- Dependents of a rerun stage that belong to other jobs are not run here: ``mark_stale`` records
  them stale, conditionally, so a job of the same title that has since rewritten one wins.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prism import tables
from prism.artifacts import StageEntry, publish, remove_outputs, title_dir
from prism.catalog import StageRecord, TitleRecord
from prism.cloud.catalog import DynamoCatalog
from prism.cloud.s3 import artifact_key, content_type, existing_keys, title_prefix, upload_order

log = logging.getLogger(__name__)


class S3Store:
    runs_dependents = False
    owns_manifest = False  # finalize assembles it from the stage records

    def __init__(
        self,
        *,
        s3,
        bucket: str,
        catalog: DynamoCatalog,
        title_id: str,
        local_root: str | Path,
        source_uri: str,
        source_etag: str | None = None,
        pipeline_version: str = "",
    ):
        self.s3, self.bucket, self.catalog, self.title_id = s3, bucket, catalog, title_id
        self.title_dir = title_dir(local_root, title_id)
        self.source_uri, self.source_etag, self.pipeline_version = source_uri, source_etag, pipeline_version
        self._keys: set[str] | None = None  # the title's keys, listed once

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[bool]:
        """No lock: a title's jobs write disjoint stages, and one execution at a time runs a title."""
        yield True

    def load(self) -> dict[str, Any] | None:
        self.title_dir.mkdir(parents=True, exist_ok=True)
        items = self.catalog.stage_items(self.title_id)
        if not items:
            return None
        ours = [
            i["source"]
            for i in items
            if isinstance(i.get("source"), dict) and i["source"].get("uri") == self.source_uri
        ]
        source = (
            ours[-1] if ours else {"uri": self.source_uri, "bytes": None, "sha256": None, "etag": None, "probe": None}
        )
        stages = {i["stage"]: i.get("manifest_entry") or StageEntry.from_record(i).to_manifest() for i in items}
        return {"title_id": self.title_id, "source": dict(source), "stages": stages}

    def _stored(self) -> set[str]:
        if self._keys is None:
            self._keys = existing_keys(self.s3, self.bucket, title_prefix(self.title_id))
        return self._keys

    def outputs_intact(self, entry: dict[str, Any]) -> bool:
        stored = self._stored()
        return all(artifact_key(self.title_id, rel) in stored for rel in entry.get("outputs", []))

    def fetch(self, entry: dict[str, Any]) -> None:
        for rel in entry.get("outputs", []):
            target = self.title_dir / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, artifact_key(self.title_id, rel), str(target))

    @contextlib.contextmanager
    def publishing(self, name: str, touched: set[str]) -> Iterator[None]:
        """Nothing to journal: a killed job leaves at most objects its record does not list yet, which
        its retry overwrites (same keys) or ``remove`` deletes."""
        yield

    def publish(self, staging: Path, outputs: list[str]) -> None:
        publish(staging, self.title_dir, outputs)
        for rel in upload_order(outputs):
            key = artifact_key(self.title_id, rel)
            self.s3.upload_file(
                str(self.title_dir / rel), self.bucket, key, ExtraArgs={"ContentType": content_type(rel)}
            )
            self._stored().add(key)

    def _extra(self, manifest: dict[str, Any], name: str) -> dict[str, Any]:
        return {
            "manifest_entry": json.dumps(manifest["stages"][name], ensure_ascii=False, default=str),
            "source": json.dumps(manifest["source"], ensure_ascii=False, default=str),
            "source_etag": self.source_etag,
            "pipeline_version": self.pipeline_version,
        }

    def record(self, manifest: dict[str, Any], name: str, record: StageRecord) -> None:
        self.catalog.put_stage(record, extra=self._extra(manifest, name))

    def remove(self, relatives: set[str], *, replaced: bool) -> None:
        """Only once a rerun succeeded: a failed rerun leaves the previous objects in place (the manifest
        ``finalize`` writes no longer lists them), so a bad redelivery never deletes good artifacts."""
        if not replaced:
            return
        for rel in sorted(relatives):
            key = artifact_key(self.title_id, rel)
            self.s3.delete_object(Bucket=self.bucket, Key=key)
            self._stored().discard(key)
        remove_outputs(self.title_dir, relatives)

    def sync(self, manifest: dict[str, Any], name: str, record: StageRecord) -> None:
        """Nothing to do: a stage record is where its manifest entry comes from, so they cannot differ."""

    def mark_stale(self, manifest: dict[str, Any], name: str, record: StageRecord, seen: str | None) -> bool:
        return self.catalog.put_stage_if(record, extra=self._extra(manifest, name), fingerprint=seen)

    def finish(self, manifest: dict[str, Any], record: TitleRecord) -> None:
        """The title's status and manifest belong to ``finalize``; the job writes the title's rows of the
        catalogue-wide tables (``tables/<artifact>/<title_id>.parquet``) for the stages it holds."""
        for name, table in tables.title_tables(self.title_dir, manifest).items():
            self.s3.put_object(
                Bucket=self.bucket, Key=tables.table_key(name, self.title_id), Body=tables.to_bytes(table),
                ContentType="application/vnd.apache.parquet",
            )  # fmt: skip

    def note_title_failure(self, record: TitleRecord) -> None:
        """Nothing to do: ``record_failure`` and ``finalize`` own the title record."""
