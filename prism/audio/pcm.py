"""Stream one audio track once: 16 kHz mono blocks for analysis and EBU R128 loudness on the side.

A single ffmpeg process per track splits the decoded audio in two: one branch is resampled to
mono float32 and piped out in fixed-size blocks (bounded memory for 2 h+ titles), the other runs
ffmpeg's ``ebur128`` filter (ITU-R BS.1770-4 with channel weights, so 5.1 is measured as it
should be, LFE excluded; ``peak=true`` for 4x-oversampled true peak) on the original channels
and rate. The filter's per-100 ms metadata (momentary, short-term, running integrated and LRA,
three decimals) is printed by ``ametadata`` into a separate pipe; its summary (true peak) and
decode errors come on stderr. All three pipes are drained concurrently, so nothing is buffered
beyond one block.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prism.errors import MediaError
from prism.media.tools import ffmpeg_exe

FLOOR_LUFS = -120.0  # ffmpeg reports -120.7 for an empty window: "no measurement", stored as null
GATE_LUFS = -70.0  # BS.1770 absolute gate: an integrated value at the gate means nothing passed it
_PEAK = re.compile(r"^\s*Peak:\s*(-?inf|[-\d.]+)\s*dBFS")
_ERROR = re.compile(r"error|invalid|corrupt|concealing", re.IGNORECASE)


@dataclass
class Loudness:
    """EBU R128 measurements of one track; series are per 100 ms step."""

    track: int
    channels: int
    sample_rate: int
    integrated_lufs: float | None = None
    lra_lu: float | None = None
    true_peak_dbtp: float | None = None
    times: list[float] = field(default_factory=list)
    momentary: list[float | None] = field(default_factory=list)
    short_term: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "track": self.track,
            "channels": self.channels,
            "sample_rate": self.sample_rate,
            "integrated_lufs": self.integrated_lufs,
            "lra_lu": self.lra_lu,
            "true_peak_dbtp": self.true_peak_dbtp,
        }


def _lufs(text: str) -> float | None:
    value = float(text)
    return None if not math.isfinite(value) or value <= FLOOR_LUFS else round(value, 3)


class TrackStream:
    """Iterate ``blocks()`` for mono PCM; after that, ``loudness`` and ``decode_errors`` are final."""

    def __init__(self, path: str | Path, track: int, *, channels: int, sample_rate: int,
                 analysis_rate: int = 16000, block_s: float = 600.0):  # fmt: skip
        self.path = Path(path)
        self.track = track
        self.analysis_rate = analysis_rate
        self.block_samples = max(160, int(block_s * analysis_rate) // 160 * 160)  # whole 10 ms windows
        self.loudness = Loudness(track, channels, sample_rate)
        self.decode_errors = 0
        self.samples_read = 0
        self._stderr_tail: deque[str] = deque(maxlen=8)

    def blocks(self) -> Iterator[np.ndarray]:
        meta_r, meta_w = os.pipe()
        graph = (
            f"[0:a:{self.track}]asplit=2[pcm][meter];"
            f"[meter]ebur128=peak=true:metadata=1:framelog=verbose,ametadata=mode=print:file=pipe\\\\:{meta_w}[m];"
            f"[pcm]aformat=sample_fmts=flt:sample_rates={self.analysis_rate}:channel_layouts=mono[p]"
        )
        cmd = [
            ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", "-i", str(self.path),
            "-filter_complex", graph, "-map", "[m]", "-f", "null", "-",
            "-map", "[p]", "-f", "f32le", "pipe:1",
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(meta_w,))
        finally:
            os.close(meta_w)
        readers = [
            threading.Thread(target=self._read_meta, args=(os.fdopen(meta_r, "rb"),), daemon=True),
            threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True),
        ]
        for reader in readers:
            reader.start()
        assert proc.stdout is not None
        block_bytes = self.block_samples * 4
        try:
            while True:
                buf = proc.stdout.read(block_bytes)
                if not buf:
                    break
                usable = len(buf) - len(buf) % 4
                block = np.frombuffer(buf[:usable], np.float32)
                self.samples_read += block.size
                yield block
        finally:
            proc.stdout.close()
            returncode = proc.wait()
            for reader in readers:
                reader.join()
        if self.samples_read == 0:
            reason = self._stderr_tail[-1] if self._stderr_tail else "no audio sample decoded"
            raise MediaError(self.path, f"audio track {self.track} could not be decoded: {reason}")
        if returncode != 0 and not self.decode_errors:
            self.decode_errors = 1

    def _read_meta(self, fh) -> None:
        lo = self.loudness
        pending: dict[str, str] = {}
        t = None

        def flush() -> None:
            if t is None:
                return
            lo.times.append(round(t + 0.1, 3))  # the value shown at the end of the 100 ms step
            lo.momentary.append(_lufs(pending.get("lavfi.r128.M", "-inf")))
            lo.short_term.append(_lufs(pending.get("lavfi.r128.S", "-inf")))

        with fh:
            for raw in fh:
                line = raw.decode("ascii", "replace").strip()
                if line.startswith("frame:"):
                    flush()
                    pending = {}
                    match = re.search(r"pts_time:(-?[\d.]+)", line)
                    t = float(match[1]) if match else (t + 0.1 if t is not None else 0.0)
                elif "=" in line:
                    key, _, value = line.partition("=")
                    pending[key] = value
                    if key == "lavfi.r128.I":
                        integrated = float(value)
                        lo.integrated_lufs = None if integrated <= GATE_LUFS else round(integrated, 3)
                    elif key == "lavfi.r128.LRA":
                        lo.lra_lu = round(float(value), 3)
            flush()

    def _read_stderr(self, fh) -> None:
        with fh:
            for raw in fh:
                line = raw.decode("utf-8", "replace").strip()
                match = _PEAK.match(line)
                if match:
                    peak = float(match[1])
                    self.loudness.true_peak_dbtp = round(peak, 1) if math.isfinite(peak) else None
                elif _ERROR.search(line) and "Parsed_ebur128" not in line:
                    self.decode_errors += 1
                    self._stderr_tail.append(line)
