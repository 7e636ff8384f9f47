"""Media that lies or is cut short, built from a good file (tests only)."""

from __future__ import annotations

from pathlib import Path

from prism.synth import ffmpeg


def _mp4_boxes(data: bytes | bytearray, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the ISO-BMFF boxes between ``start`` and ``end``."""
    import struct

    end = len(data) if end is None else end
    boxes, pos = [], start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = end - pos
        boxes.append((kind, pos, size))
        pos += size
    return boxes


def lie_about_duration(src: str | Path, out: str | Path, claimed_s: float) -> None:
    """Copy an MP4, rewriting the movie header (``mvhd``) to claim ``claimed_s`` seconds.

    The samples are untouched: a demuxer that trusts the header reports the lie, a decoder
    still finds the real frames (what a broken packager or a hostile upload produces).
    """
    import struct

    data = bytearray(Path(src).read_bytes())
    [(_, moov, moov_size)] = [b for b in _mp4_boxes(data) if b[0] == b"moov"]
    [(_, mvhd, _)] = [b for b in _mp4_boxes(data, moov + 8, moov + moov_size) if b[0] == b"mvhd"]
    body = mvhd + 8
    if data[body] != 0:
        raise ValueError(f"{src}: only version-0 mvhd boxes are supported")
    timescale = struct.unpack(">I", data[body + 12 : body + 16])[0]
    data[body + 16 : body + 20] = struct.pack(">I", int(claimed_s * timescale))
    Path(out).write_bytes(data)


def truncate_mp4(src: str | Path, out: str | Path, keep: float) -> None:
    """Write ``src`` with its index first (faststart) and only the first ``keep`` share of its media data.

    The index still declares the whole duration: what an interrupted upload or copy leaves behind.
    """
    tmp = Path(out).with_suffix(".faststart.mp4")
    ffmpeg("-i", str(src), "-map", "0", "-c", "copy", "-movflags", "+faststart", str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    [(_, mdat, size)] = [b for b in _mp4_boxes(data) if b[0] == b"mdat"]
    Path(out).write_bytes(data[: mdat + 8 + int(keep * (size - 8))])
