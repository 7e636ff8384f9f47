"""Typed errors raised inside the library.

They become a ``failed`` status with a one-line reason only at the edges (runner, CLI,
worker entrypoint, Lambda handlers).
"""

from __future__ import annotations

from pathlib import Path


def safe_text(text: str) -> str:
    """``text`` with the undecodable bytes of a non-UTF-8 file name (``caf\\xe9.mp4``, which Python
    holds as lone surrogates) spelled as ``\\xNN``: printable, and storable in JSON and SQLite."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class PrismError(Exception):
    """Base class for every error Prism turns into a ``failed`` status."""


class MediaError(PrismError):
    """The input file cannot be read as the media we need (missing, empty, corrupt, no stream)."""

    def __init__(self, path: str | Path, cause: str):
        self.path = safe_text(str(path))
        self.cause = safe_text(cause)
        super().__init__(f"{self.path}: {cause}")


class ModelUnavailable(PrismError):
    """A stage's model is not present on this machine; the message says how to provide one."""


class StageInputMissing(PrismError):
    """A stage's declared input (an upstream stage's artifact) is not there."""


class ConfigError(PrismError, ValueError):
    """A parameter or configuration value is invalid."""


class StorageError(PrismError):
    """Prism's own output cannot be written or read (directory not writable, disk full, corrupt catalog).

    The runner fails only the title being written; raised before any work (opening the
    catalog), the CLI ends with exit 2.
    """


class ArtifactSchemaError(PrismError):
    """A stage wrote a file that is not what it declares (undeclared file, wrong Parquet schema)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C reached a running stage (at a progress report): it stops without recording anything.

    A KeyboardInterrupt, not a PrismError: nothing may turn it into a ``failed`` stage.
    """
