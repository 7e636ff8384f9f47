"""Find the ffmpeg binaries: ``$PRISM_FFMPEG``, then PATH, then the binary imageio-ffmpeg ships."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from prism.errors import PrismError


@functools.cache
def ffmpeg_exe() -> str:
    explicit = os.environ.get("PRISM_FFMPEG")
    if explicit:
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - imageio-ffmpeg is a declared dependency
        raise PrismError("ffmpeg not found on PATH and imageio-ffmpeg is not installed") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffprobe_exe() -> str | None:
    """ffprobe if there is one; imageio-ffmpeg ships ffmpeg only, so this may be None."""
    explicit = os.environ.get("PRISM_FFPROBE")
    if explicit:
        return explicit or None
    beside = Path(ffmpeg_exe()).with_name("ffprobe")
    if beside.exists():
        return str(beside)
    return shutil.which("ffprobe")


def input_arg(path: str | Path) -> str:
    """``path`` as an ffmpeg/ffprobe file argument: absolute, so a name starting with ``-`` is never
    read as an option, and one with a ``:`` (``a:b.mp4``) never as a protocol."""
    return os.path.abspath(os.fspath(path))
