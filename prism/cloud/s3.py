"""S3 locations of a title's artifacts: the same ``titles/<title_id>/...`` layout as a local run."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from prism.artifacts import MANIFEST, TITLES_DIR

CONTENT_TYPES = {".parquet": "application/vnd.apache.parquet", ".vtt": "text/vtt", ".srt": "application/x-subrip"}


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        return cls(parsed.netloc, unquote(parsed.path.lstrip("/")))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def title_prefix(title_id: str) -> str:
    return f"{TITLES_DIR}/{title_id}/"


def artifact_key(title_id: str, relative: str) -> str:
    return title_prefix(title_id) + relative


def manifest_key(title_id: str) -> str:
    return artifact_key(title_id, MANIFEST)


def content_type(name: str) -> str:
    for suffix, kind in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return kind
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def upload_order(outputs: list[str]) -> list[str]:
    """Nested files first, top-level indexes last: the same order as ``artifacts.publish``."""
    return sorted(outputs, key=lambda rel: (rel.count("/") == 0, rel))


def object_exists(s3, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
