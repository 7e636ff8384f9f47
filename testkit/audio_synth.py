"""Generate a dialogue title with known ground truth: espeak-ng voices over ffmpeg music and silence.

Used by the audio stage's tests and benchmark; nothing is downloaded. Two espeak-ng voices take
turns reading known sentences; the bed under them is generated music (a chord with a moving
bass and a pulse) or digital silence. The truth records the exact speech extents (measured on
the rendered speech, not guessed from the text), who speaks when, and where music lies.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prism.media.tools import ffmpeg_exe

RATE = 48000
VOICES = ("en-us+m3", "en-us+belinda")  # far apart for a voice encoder (cosine ~0.58; m3 vs f4 is ~0.86)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (``-v``, e.g. ``ko+f2``) with its pitch (``-p``, 0-99) and speed (``-s``, wpm)."""

    name: str
    pitch: int = 50
    speed: int = 150

    @classmethod
    def of(cls, voice: str | Voice) -> Voice:
        return voice if isinstance(voice, Voice) else cls(voice)


KOREAN_VOICES = (
    "ko+klatt",
    "ko+klatt2",
)  # espeak-ng's Klatt variants: the default "ko" is heard as Thai by Whisper base
KOREAN_LINES = (
    (0, "안녕하세요. 오늘은 날씨가 춥고 바람이 많이 불어요."),
    (1, "감사합니다. 저는 역까지 걸어가서 아침 기차를 탈 거예요."),
    (0, "도착하면 전화해 주세요. 공연 표를 잊지 마세요."),
    (1, "물론이죠. 일곱 시에 강가의 오래된 다리에서 만나요."),
)

DEFAULT_LINES = (
    (0, "Good morning. The weather today is cold and windy, so take a warm coat."),
    (1, "Thank you. I will walk to the station and take the early train to the city."),
    (0, "Please call me when you arrive, and do not forget the tickets for the show."),
    (1, "Of course. We can meet at the old bridge near the river at seven o'clock."),
)


@dataclass(frozen=True)
class Turn:
    speaker: int
    text: str
    start_s: float
    end_s: float  # first and last sample above -50 dBFS of the rendered speech


@dataclass
class DialogueTruth:
    duration_s: float
    turns: list[Turn]
    music: list[tuple[float, float]]  # spans of music bed (under speech or alone)
    silence: list[tuple[float, float]]  # spans with neither speech nor music
    text: str = field(default="")


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _speak(text: str, voice: str | Voice, work: Path, index: int) -> np.ndarray:
    v = Voice.of(voice)
    wav = work / f"turn{index}.wav"
    cmd = ["espeak-ng", "-v", v.name, "-p", str(v.pitch), "-s", str(v.speed), "-w", str(wav), text]
    subprocess.run(cmd, check=True, capture_output=True)
    return _decode(wav)


def _decode(path: Path | str, lavfi: bool = False) -> np.ndarray:
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error"] + (["-f", "lavfi"] if lavfi else []) + [
        "-i", str(path), "-ac", "1", "-ar", str(RATE), "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    return np.frombuffer(subprocess.run(cmd, check=True, capture_output=True).stdout, np.float32).copy()


def music(duration_s: float) -> np.ndarray:
    """A chord over a walking bass with a 2 Hz pulse: tonal, rhythmic, clearly not speech."""
    expr = (
        "0.20*sin(2*PI*(110+55*gte(mod(t,2),1))*t)"
        "+0.12*sin(2*PI*330*t)*(0.6+0.4*sin(2*PI*2*t))"
        "+0.10*sin(2*PI*415.3*t)+0.08*sin(2*PI*493.9*t)"
    )
    return _decode(f"aevalsrc='{expr}':s={RATE}:d={duration_s}", lavfi=True)


def build_dialogue(
    out: str | Path,
    *,
    lines: tuple[tuple[int, str], ...] = DEFAULT_LINES,
    lead_silence_s: float = 1.5,
    music_intro_s: float = 2.5,
    gap_s: float = 1.0,
    music_turns: int = 2,
    music_gain_db: float = -30.0,
    tail_silence_s: float = 2.0,
    repeat: int = 1,
    audio_codec: list[str] | None = None,
    voices: tuple[str | Voice, ...] = VOICES,
) -> DialogueTruth:
    """Render the dialogue as a small video (mp4, AAC stereo 48 kHz) and return its truth.

    Layout: ``lead_silence_s`` of silence, ``music_intro_s`` of music alone, then the turns
    separated by ``gap_s``; the music bed runs under the first ``music_turns`` turns and stops
    at the end of the last of them; the rest is speech over silence, then ``tail_silence_s``.
    ``repeat`` > 1 repeats the turn list (for the benchmark's longer input). ``voices[i]`` reads
    the lines of speaker ``i``.
    """
    out = Path(out)
    work = out.with_suffix(".parts")
    work.mkdir(parents=True, exist_ok=True)
    all_lines = list(lines) * repeat
    rendered = [_speak(text, voices[spk], work, i) for i, (spk, text) in enumerate(all_lines)]
    pos = lead_silence_s + music_intro_s
    turns: list[Turn] = []
    placed: list[tuple[int, np.ndarray]] = []
    thr = 10 ** (-50 / 20)
    for (spk, text), wav in zip(all_lines, rendered):
        loud = np.flatnonzero(np.abs(wav) > thr)
        wav = wav[loud[0] : loud[-1] + 1] if loud.size else wav
        start = int(round(pos * RATE))
        placed.append((start, wav))
        turns.append(Turn(spk, text, start / RATE, (start + wav.size) / RATE))
        pos = (start + wav.size) / RATE + gap_s
    music_end = turns[min(music_turns, len(turns)) - 1].end_s if music_turns else lead_silence_s + music_intro_s
    total = turns[-1].end_s + tail_silence_s
    mix = np.zeros(int(round(total * RATE)), np.float32)
    m0, m1 = int(round(lead_silence_s * RATE)), int(round(music_end * RATE))
    if m1 > m0:
        bed = music(music_end - lead_silence_s + 0.1)[: m1 - m0]
        mix[m0 : m0 + bed.size] += bed * np.float32(10 ** (music_gain_db / 20) / max(float(np.abs(bed).max()), 1e-9))
    for start, wav in placed:
        mix[start : start + wav.size] += wav * np.float32(0.5 / max(float(np.abs(wav).max()), 1e-9))
    raw = work / "mix.f32"
    raw.write_bytes(np.clip(mix, -1, 1).astype(np.float32).tobytes())
    codec = audio_codec or ["-c:a", "aac", "-b:a", "128k"]
    cmd = [
        ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"color=c=0x203040:size=160x90:rate=10:d={total:.3f}",
        "-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", str(raw),
        "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        *codec, "-ac", "2", "-shortest", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    silence = [(0.0, lead_silence_s)]
    speech_after_music = [t for t in turns if t.start_s >= music_end]
    edges = [music_end] + [x for t in speech_after_music for x in (t.start_s, t.end_s)] + [total]
    silence += [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a > 0]
    return DialogueTruth(
        duration_s=total,
        turns=turns,
        music=[(lead_silence_s, music_end)] if music_end > lead_silence_s else [],
        silence=silence,
        text=" ".join(text for _, text in all_lines),
    )
