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


class ListingDenied(PermissionError):
    """S3 refused to list a prefix: the caller's role lacks ``s3:ListBucket`` for it (a deployment fault)."""


def existing_keys(s3, bucket: str, prefix: str) -> set[str]:
    """Every key under ``prefix``, from ListObjectsV2 (one call per 1,000 keys).

    One listing per title instead of a HeadObject per file: a 2-hour title has thousands of
    keyframes, and without an unconditional ``s3:ListBucket`` S3 answers HeadObject on a missing
    key with 403, not 404, which cannot be told apart from a real denial. A denied listing raises
    :class:`ListingDenied` naming the bucket and prefix.
    """
    from botocore.exceptions import ClientError

    keys: set[str] = set()
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.update(obj["Key"] for obj in page.get("Contents", []))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") in ("AccessDenied", "403", "AllAccessDisabled"):
            raise ListingDenied(f"cannot list s3://{bucket}/{prefix} ({error.get('Code')}): the role needs "
                                f"s3:ListBucket with s3:prefix {prefix}* on {bucket}") from exc  # fmt: skip
        raise
    return keys
