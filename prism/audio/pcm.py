"""Stream one audio track once: 16 kHz mono blocks for analysis and EBU R128 loudness on the side.

A single ffmpeg process per track splits the decoded audio in two: one branch is resampled to
mono float32 and piped out in fixed-size blocks (bounded memory for 2 h+ titles), the other runs
ffmpeg's ``ebur128`` filter (ITU-R BS.1770-4 with channel weights, so 5.1 is measured as it
should be, LFE excluded; ``peak=true`` for 4x-oversampled true peak) on the original channels
and rate. The filter's per-100 ms metadata (momentary, short-term, running integrated and LRA,
three decimals) is printed by ``ametadata`` into a separate pipe; its summary (true peak) and
decode errors come on stderr. All three pipes are drained concurrently, so nothing is buffered
beyond one block.

A title's track is decoded once when several stages read it (``SharedMedia.audio_track``): with a
``spool`` path, the first ``blocks()`` writes the mono PCM (about 230 MB per hour of audio) and,
once the decode has ended, its loudness and error counts beside it; a later stream with the same
spool replays those instead of running ffmpeg again. Only the work directory of the title run
holds the spool, and it goes with it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prism.errors import MediaError
from prism.media.tools import ffmpeg_exe, input_arg

ANALYSIS_RATE = 16000  # the mono PCM every analysis reads (Whisper, VAD, levels)
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

    def series(self) -> dict:
        return {"times": self.times, "momentary": self.momentary, "short_term": self.short_term}

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
                 analysis_rate: int = ANALYSIS_RATE, block_s: float = 600.0,
                 spool: Path | None = None):  # fmt: skip
        self.path = Path(path)
        self.spool = spool
        self.track = track
        self.analysis_rate = analysis_rate
        self.block_samples = max(160, int(block_s * analysis_rate) // 160 * 160)  # whole 10 ms windows
        self.loudness = Loudness(track, channels, sample_rate)
        self.decode_errors = 0
        self.samples_read = 0
        self.exit_reason: str | None = None  # set when ffmpeg exited non-zero (after some samples)
        self._stderr_tail: deque[str] = deque(maxlen=8)

    def spooled(self) -> bool:
        """Whether an earlier stream of this track left a finished spool to replay."""
        return self.spool is not None and self._done_path().is_file()

    def blocks(self) -> Iterator[np.ndarray]:
        if self.spooled():
            yield from self._replay()
            return
        if self.spool is None:
            yield from self._decode()
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        # a private file renamed into place when whole: stages running side by side (prism/schedule.py)
        # may both decode a track, and neither may read or overwrite the other's half-written spool
        part = self.spool.with_name(f"{self.spool.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(part, "wb") as pcm:
                for block in self._decode():
                    pcm.write(block.tobytes())
                    yield block
            os.replace(part, self.spool)
        except MediaError as exc:  # a later reader gets the same error without decoding again
            self._write_done({"error": exc.cause})
            raise
        finally:
            part.unlink(missing_ok=True)
        self._write_done(
            {
                "samples_read": self.samples_read,
                "decode_errors": self.decode_errors,
                "stderr_tail": list(self._stderr_tail),
                "exit_reason": self.exit_reason,
                "loudness": {**self.loudness.to_dict(), **self.loudness.series()},
            }
        )

    def _done_path(self) -> Path:
        assert self.spool is not None
        return self.spool.with_name(self.spool.name + ".json")

    def _write_done(self, record: dict) -> None:
        from prism.artifacts import write_json

        write_json(self._done_path(), {"analysis_rate": self.analysis_rate, **record})

    def _replay(self) -> Iterator[np.ndarray]:
        record = json.loads(self._done_path().read_text())
        if record.get("analysis_rate") != self.analysis_rate:
            raise ValueError(f"{self.spool} holds {record.get('analysis_rate')} Hz PCM, not {self.analysis_rate}")
        if "error" in record:
            raise MediaError(self.path, record["error"])
        self.decode_errors = record["decode_errors"]
        self._stderr_tail.extend(record["stderr_tail"])
        self.exit_reason = record["exit_reason"]
        lo = record["loudness"]
        self.loudness = Loudness(
            self.track, lo["channels"], lo["sample_rate"], lo["integrated_lufs"], lo["lra_lu"], lo["true_peak_dbtp"],
            list(lo["times"]), list(lo["momentary"]), list(lo["short_term"]),
        )  # fmt: skip
        assert self.spool is not None  # spooled() said so
        with open(self.spool, "rb") as pcm:
            while buf := pcm.read(self.block_samples * 4):
                block = np.frombuffer(buf, np.float32)
                self.samples_read += block.size
                yield block

    def _decode(self) -> Iterator[np.ndarray]:
        meta_r, meta_w = os.pipe()
        graph = (
            f"[0:a:{self.track}]asplit=2[pcm][meter];"
            f"[meter]ebur128=peak=true:metadata=1:framelog=verbose,ametadata=mode=print:file=pipe\\\\:{meta_w}[m];"
            f"[pcm]aformat=sample_fmts=flt:sample_rates={self.analysis_rate}:channel_layouts=mono[p]"
        )
        cmd = [
            ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", "-i", input_arg(self.path),
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
        if returncode != 0:
            self.exit_reason = self._stderr_tail[-1] if self._stderr_tail else f"ffmpeg exited with code {returncode}"
            if not self.decode_errors:
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


class PcmStream:
    """The plain 16 kHz mono decode of one track, when no loudness is needed and nothing else reads it.

    Same samples as :class:`TrackStream` (ffmpeg's downmix and resampler either way), without the
    EBU R128 meter (its true peak oversamples 4x: several times the decode's cost). ``blocks()``
    raises MediaError when ffmpeg fails, so ``exit_reason`` stays None.
    """

    def __init__(self, path: str | Path, track: int, *, block_s: float = 600.0):
        self.path = Path(path)
        self.track = track
        self.block_s = block_s
        self.block_samples = max(160, int(block_s * ANALYSIS_RATE) // 160 * 160)
        self.exit_reason: str | None = None

    def blocks(self) -> Iterator[np.ndarray]:
        from prism.media import audio_blocks

        yield from audio_blocks(self.path, self.track, ANALYSIS_RATE, block_s=self.block_samples / ANALYSIS_RATE)
