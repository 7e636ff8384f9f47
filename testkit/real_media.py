"""The real recordings committed under tests/data (sources and licences in tests/data/README.md), and how to score on them.

Tests and ``benchmarks/real_audio.py`` share this module: the reference turns of the diarization
clips (RTTM), the known transcripts of the language clips, Prism's speaker turns for a clip (the
same VAD and voice-embedding path the audio stage runs), and the diarization error rate computed
by pyannote.metrics, the reference implementation of the NIST definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"

# clip -> (audio file, its reference RTTM); every reference covers the whole clip
DIARIZATION_CLIPS = {
    "falcon_3speakers": "falcon_3speakers.flac",
    "stereo_diarization": "stereo_diarization.flac",
    "pyannote_sample": "pyannote_sample.flac",
    "ami_dev00": "ami_dev00.flac",
    "ami_dev01": "ami_dev01.flac",
    "ami_tst00": "ami_tst00.flac",
    "ami_tst01": "ami_tst01.flac",
}
# NIST md-eval's 0.25 s collar is 0.25 s on each side of a reference boundary; pyannote.metrics'
# ``collar`` is the collar's total width, so 0.5 there
NIST_COLLAR_S = 0.25


@dataclass(frozen=True)
class RefTurn:
    speaker: str
    start_s: float
    end_s: float


def language_clips() -> dict[str, dict]:
    """``{clip: {"language", "transcript", "path"}}`` for Picovoice leopard's single-speaker clips."""
    table = json.loads((DATA / "leopard_transcripts.json").read_text(encoding="utf-8"))
    return {name: {**row, "path": DATA / f"{name}.flac"} for name, row in table.items()}


def reference_turns(clip: str) -> list[RefTurn]:
    turns = []
    for line in (DATA / f"{clip}.rttm").read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            start, dur = float(f[3]), float(f[4])
            turns.append(RefTurn(f[7], start, round(start + dur, 3)))
    return turns


def mono_pcm(path: Path):
    """The clip as Prism hears it: 16 kHz mono float32 (a stereo file is downmixed, as the stage does)."""
    from prism.audio.speech import SR
    from prism.media import decode_audio

    return decode_audio(path, 0, SR).samples


def speaker_turns(path: Path, config=None, vad_config=None) -> list:
    """Prism's speaker turns for one clip: Silero VAD spans, resemblyzer windows, clustering."""
    from prism.audio.speakers import SpeakerConfig, WindowEmbedder, load_encoder
    from prism.audio.speech import StreamingVad, VadConfig

    pcm = mono_pcm(path)
    spans, _, _ = StreamingVad(vad_config or VadConfig()).feed(pcm, last=True)
    embedder = WindowEmbedder(load_encoder("cpu"), config or SpeakerConfig())
    embedder.add(pcm, 0.0, spans)
    return embedder.turns()


def diarization_error(reference: list[RefTurn], hypothesis: list, duration_s: float, collar_s: float = 0.0) -> dict:
    """DER and its parts (pyannote.metrics), overlap scored, over the whole clip.

    ``collar_s`` is the NIST collar: that many seconds on each side of every reference boundary
    are not scored. Returns ``{"der", "missed", "false_alarm", "confusion", "total"}`` (seconds, DER a ratio).
    """
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for i, t in enumerate(reference):
        ref[Segment(t.start_s, t.end_s), i] = t.speaker
    for i, t in enumerate(hypothesis):
        hyp[Segment(t.start_s, t.end_s), i] = t.speaker
    metric = DiarizationErrorRate(collar=2 * collar_s, skip_overlap=False)
    parts = metric(ref, hyp, uem=Timeline([Segment(0.0, duration_s)]), detailed=True)
    return {
        "der": float(parts["diarization error rate"]),
        "missed": float(parts["missed detection"]),
        "false_alarm": float(parts["false alarm"]),
        "confusion": float(parts["confusion"]),
        "total": float(parts["total"]),
    }


def video_with_audio(audio: Path, out: Path, lead_s: float = 1.0) -> Path:
    """A small title for the Runner: black 160x90 video at 10 fps over the recording (AAC), after ``lead_s`` of silence."""
    import subprocess

    from prism.media.tools import ffmpeg_exe

    delay = int(lead_s * 1000)
    cmd = [
        ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(audio),
        "-f", "lavfi", "-i", "color=c=black:s=160x90:r=10",
        "-filter_complex", f"[0:a]adelay={delay}:all=1,apad=pad_dur=1[a]",
        "-map", "1:v", "-map", "[a]", "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "128k", "-ar", "48000", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return out
