"""``DynamoCatalog``: the cloud catalog, the same records as ``SQLiteCatalog`` in one DynamoDB table.

Item layout (one table, ``PAY_PER_REQUEST``):

- ``title_id`` (partition key) and ``record`` (sort key): ``TITLE`` for the title record,
  ``STAGE#<stage>`` for a stage record. Attribute names are the dataclass field names.
- Stage items may carry extras the local catalog keeps in ``manifest.json`` instead:
  ``manifest_entry`` (the stage's manifest entry) and ``source`` (source facts), both JSON
  strings, written by the worker so ``finalize`` can assemble the manifest without races.
- Title items may carry ``source_etag`` and ``pipeline_version``, which ``discover`` compares
  to decide whether a delivered title was already processed.
- ``#RUN``/``scheduled`` holds the scheduled runs' watermark: ``listed_through`` (every title
  delivered before it was processed or is pending) and the ``pipeline_version`` it holds for
  (``#`` never occurs in a title id).
- ``#PENDING``/``<title_id>`` marks a title a scheduled run took on, with its ``delivered_at``;
  the state machine deletes it when the title completes (succeeded or failed). The oldest marker
  holds the watermark back, so it advances per completed title and a run that dies loses nothing.
- ``#ATTEMPTS``/``<title_id>`` counts the scheduled runs that took a title (``attempts``) for one
  delivered object (``source_etag``) and ``pipeline_version``; discover deletes it once the title
  succeeded, retries a failed title while ``attempts`` is under the limit and parks it after.
- ``JOB#<job>`` (under the title) holds the worker's own reason when it ends a job with exit code 2, 75
  or 76 (``reason``, ``exit_code``, ``execution``, ``at``): ``record_failure`` reads it, since Batch
  reports only "Essential container in task exited".
- Source hashes are cached under ``#HASH``/``<s3 uri>#<etag>``.
- The ``record-index`` GSI (``record``, ``title_id``) lists all titles without a scan.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from decimal import Decimal
from typing import Any

from prism.catalog import StageRecord, TitleRecord

TITLE = "TITLE"
STAGE_PREFIX = "STAGE#"
RECORD_INDEX = "record-index"
RUN_KEY = "#RUN"
PENDING_KEY = "#PENDING"
HASH_KEY = "#HASH"
ATTEMPTS_KEY = "#ATTEMPTS"
JOB_PREFIX = "JOB#"


def _to_attr(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_attr(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_attr(v) for v in value]
    return value


def _from_attr(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_attr(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_attr(v) for v in value]
    return value


class DynamoCatalog:
    """Implements :class:`prism.catalog.Catalog` on a DynamoDB table (see module docstring)."""

    def __init__(self, table_name: str, *, client=None):
        import boto3
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self.table_name = table_name
        self._client = client or boto3.client("dynamodb")
        self._ser, self._de = TypeSerializer(), TypeDeserializer()

    # -- low level -------------------------------------------------------------------------
    def _put(self, item: dict[str, Any]) -> None:
        wire = {k: self._ser.serialize(_to_attr(v)) for k, v in item.items()}
        self._client.put_item(TableName=self.table_name, Item=wire)

    def get_item(self, title_id: str, record: str) -> dict[str, Any] | None:
        resp = self._client.get_item(
            TableName=self.table_name, Key={"title_id": {"S": title_id}, "record": {"S": record}}, ConsistentRead=True
        )
        return self._plain(resp["Item"]) if "Item" in resp else None

    def _plain(self, wire: dict[str, Any]) -> dict[str, Any]:
        return {k: _from_attr(self._de.deserialize(v)) for k, v in wire.items()}

    def _query(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        start = None
        while True:
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = self._client.query(TableName=self.table_name, **kwargs)
            items.extend(self._plain(i) for i in resp.get("Items", []))
            start = resp.get("LastEvaluatedKey")
            if not start:
                return items

    # -- Catalog protocol ------------------------------------------------------------------
    def put_title(self, record: TitleRecord, *, extra: dict[str, Any] | None = None) -> None:
        self._put({**(extra or {}), **asdict(record), "record": TITLE})

    def get_title(self, title_id: str) -> TitleRecord | None:
        item = self.get_item(title_id, TITLE)
        return _record(TitleRecord, item) if item else None

    def list_titles(self) -> list[TitleRecord]:
        items = self._query(
            IndexName=RECORD_INDEX,
            KeyConditionExpression="#r = :t",
            ExpressionAttributeNames={"#r": "record"},
            ExpressionAttributeValues={":t": {"S": TITLE}},
        )
        return sorted((_record(TitleRecord, i) for i in items), key=lambda t: t.title_id)

    def put_stage(self, record: StageRecord, *, extra: dict[str, Any] | None = None) -> None:
        self._put({**(extra or {}), **asdict(record), "record": STAGE_PREFIX + record.stage})

    def put_stage_if(
        self, record: StageRecord, *, extra: dict[str, Any] | None = None, fingerprint: str | None
    ) -> bool:
        """``put_stage`` only while the stored record still has ``fingerprint``; False when another writer won."""
        item = {**(extra or {}), **asdict(record), "record": STAGE_PREFIX + record.stage}
        wire = {k: self._ser.serialize(_to_attr(v)) for k, v in item.items()}
        try:
            self._client.put_item(
                TableName=self.table_name, Item=wire, ConditionExpression="fingerprint = :seen",
                ExpressionAttributeValues={":seen": self._ser.serialize(fingerprint)},
            )  # fmt: skip
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def get_stage(self, title_id: str, stage: str) -> StageRecord | None:
        item = self.get_item(title_id, STAGE_PREFIX + stage)
        return _record(StageRecord, item) if item else None

    def list_stages(self, title_id: str) -> list[StageRecord]:
        return [_record(StageRecord, i) for i in self.stage_items(title_id)]

    # -- cloud extras ----------------------------------------------------------------------
    def mark_stage(self, title_id: str, stage: str, **attrs: Any) -> None:
        """Add ``attrs`` to a stage's item (``retryable``), keeping the rest; no item, no write."""
        item = self.get_item(title_id, STAGE_PREFIX + stage)
        if item is not None:
            self._put({**item, **attrs})

    def put_job_failure(self, title_id: str, job: str, *, reason: str, exit_code: int, execution: str,
                        at: str) -> None:  # fmt: skip
        """The worker's own reason for ending a job with a failure code (Batch reports only the exit code)."""
        self._put({"title_id": title_id, "record": JOB_PREFIX + job, "reason": reason, "exit_code": exit_code,
                   "execution": execution, "at": at})  # fmt: skip

    def job_failure(self, title_id: str, job: str) -> dict[str, Any] | None:
        return self.get_item(title_id, JOB_PREFIX + job)

    def stage_items(self, title_id: str) -> list[dict[str, Any]]:
        """Raw stage items of a title (with ``manifest_entry`` and ``source`` decoded)."""
        items = self._query(
            KeyConditionExpression="title_id = :t AND begins_with(#r, :p)",
            ExpressionAttributeNames={"#r": "record"},
            ExpressionAttributeValues={":t": {"S": title_id}, ":p": {"S": STAGE_PREFIX}},
        )
        for item in items:
            for key in ("manifest_entry", "source"):
                if isinstance(item.get(key), str):
                    item[key] = json.loads(item[key])
        return sorted(items, key=lambda i: (i.get("started_at") or "", i["stage"]))

    def source_hash(self, uri: str, etag: str) -> str | None:
        item = self.get_item(HASH_KEY, f"{uri}#{etag}")
        return item["sha256"] if item else None

    def store_source_hash(self, uri: str, etag: str, sha256: str) -> None:
        self._put({"title_id": HASH_KEY, "record": f"{uri}#{etag}", "sha256": sha256})

    def run_watermark(self, mode: str = "scheduled") -> dict[str, Any] | None:
        return self.get_item(RUN_KEY, mode)

    def put_run_watermark(self, listed_through: str, pipeline_version: str, execution: str,
                          mode: str = "scheduled", **extra: Any) -> None:  # fmt: skip
        """``extra``: discover's back-catalogue cursor (``backfill_version``, ``backfill_after``, ``backfilled``)."""
        self._put({**extra, "title_id": RUN_KEY, "record": mode, "listed_through": listed_through,
                   "pipeline_version": pipeline_version, "execution": execution})  # fmt: skip

    def titles_by_id(self, title_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Title items of ``title_ids`` (those that exist), 100 keys per BatchGetItem."""
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(title_ids), 100):
            keys = [{"title_id": {"S": t}, "record": {"S": TITLE}} for t in dict.fromkeys(title_ids[i : i + 100])]
            request: dict[str, Any] | None = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            while request:
                resp = self._client.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table_name, []):
                    plain = self._plain(item)
                    found[plain["title_id"]] = plain
                request = resp.get("UnprocessedKeys") or None
        return found

    def put_pending(self, titles: dict[str, str], execution: str) -> None:
        """Mark ``titles`` (title id -> delivered_at) as taken on by a scheduled run, 25 per BatchWriteItem."""
        items = list(titles.items())
        for i in range(0, len(items), 25):
            writes = [{"PutRequest": {"Item": {"title_id": {"S": PENDING_KEY}, "record": {"S": t},
                                               "delivered_at": {"S": at}, "execution": {"S": execution}}}}
                      for t, at in items[i : i + 25]]  # fmt: skip
            request: dict[str, Any] | None = {self.table_name: writes}
            while request:
                request = self._client.batch_write_item(RequestItems=request).get("UnprocessedItems") or None

    def delete_pending(self, title_ids: list[str]) -> None:
        for i in range(0, len(title_ids), 25):
            deletes = [{"DeleteRequest": {"Key": {"title_id": {"S": PENDING_KEY}, "record": {"S": t}}}}
                       for t in title_ids[i : i + 25]]  # fmt: skip
            request: dict[str, Any] | None = {self.table_name: deletes}
            while request:
                request = self._client.batch_write_item(RequestItems=request).get("UnprocessedItems") or None

    def attempts(self) -> dict[str, dict[str, Any]]:
        """Title id -> its ``#ATTEMPTS`` item (``attempts``, ``source_etag``, ``pipeline_version``, ...)."""
        items = self._query(
            KeyConditionExpression="title_id = :p", ExpressionAttributeValues={":p": {"S": ATTEMPTS_KEY}}
        )
        return {i["record"]: i for i in items}

    def put_attempts(self, attempts: dict[str, dict[str, Any]]) -> None:
        """Write ``#ATTEMPTS`` items (title id -> attributes), 25 per BatchWriteItem."""
        items = list(attempts.items())
        for i in range(0, len(items), 25):
            writes = [{"PutRequest": {"Item": {k: self._ser.serialize(_to_attr(v)) for k, v in
                                               {**attrs, "title_id": ATTEMPTS_KEY, "record": t}.items()}}}
                      for t, attrs in items[i : i + 25]]  # fmt: skip
            request: dict[str, Any] | None = {self.table_name: writes}
            while request:
                request = self._client.batch_write_item(RequestItems=request).get("UnprocessedItems") or None

    def delete_attempts(self, title_ids: list[str]) -> None:
        for i in range(0, len(title_ids), 25):
            deletes = [{"DeleteRequest": {"Key": {"title_id": {"S": ATTEMPTS_KEY}, "record": {"S": t}}}}
                       for t in title_ids[i : i + 25]]  # fmt: skip
            request: dict[str, Any] | None = {self.table_name: deletes}
            while request:
                request = self._client.batch_write_item(RequestItems=request).get("UnprocessedItems") or None

    def pending(self) -> dict[str, str]:
        """Titles a scheduled run took on that have not completed: title id -> delivered_at."""
        items = self._query(
            KeyConditionExpression="title_id = :p", ExpressionAttributeValues={":p": {"S": PENDING_KEY}}
        )
        return {i["record"]: i["delivered_at"] for i in items}


def _record(cls: type, item: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in item.items() if k in names}
    for f in fields(cls):
        values.setdefault(f.name, [] if f.name == "outputs" else None)
    if cls is StageRecord and values.get("duration_s") is not None:
        values["duration_s"] = float(values["duration_s"])
    return cls(**values)
