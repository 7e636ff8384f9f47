"""Subtitles from a word-timed transcript: WebVTT and SRT with broadcast-style line rules.

Cues follow common localization style guides (Netflix/BBC-like): at most ``max_lines`` lines of
``max_chars`` characters, a cue lasts ``min_s``..``max_s`` seconds, a new cue starts at a
speaker change or a pause, and cues prefer to end at sentence or clause punctuation. Times come
from the word timings, so a cue never starts before its first word is spoken.
"""

from __future__ import annotations

from dataclasses import dataclass

from prism.audio.speech import Segment, Word


@dataclass(frozen=True)
class CueRules:
    max_chars: int = 42
    max_lines: int = 2
    min_s: float = 1.0
    max_s: float = 7.0
    pause_s: float = 1.0  # a longer pause between words starts a new cue
    min_gap_s: float = 0.04  # keep cues from touching (two frames at 50 fps)


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]
    speaker: str | None = None


def _words(segments: list[Segment]) -> list[Word]:
    out = []
    for seg in segments:
        for w in seg.words:
            if w.word.strip():
                out.append(w)
    return out


def _split_lines(tokens: list[str], max_chars: int) -> list[str] | None:
    """One line if it fits, else the most balanced two-line break; None if it cannot fit.

    ``tokens`` are Whisper's word strings with their own leading spaces ("o", "'clock" join
    without one), so lines break only where a token starts with a space.
    """
    one = "".join(tokens).strip()
    if len(one) <= max_chars:
        return [one]
    best = None
    for k in range(1, len(tokens)):
        if not tokens[k].startswith(" "):
            continue
        a, b = "".join(tokens[:k]).strip(), "".join(tokens[k:]).strip()
        if len(a) <= max_chars and len(b) <= max_chars:
            # balanced lines, and a break after punctuation is preferred
            score = abs(len(a) - len(b)) - (8 if a[-1] in ",.;:!?" else 0)
            if best is None or score < best[0]:
                best = (score, [a, b])
    return best[1] if best else None


def build_cues(segments: list[Segment], rules: CueRules = CueRules()) -> list[Cue]:
    words = _words(segments)
    cues: list[Cue] = []
    current: list[Word] = []

    def fits(candidate: list[Word]) -> bool:
        lines = _split_lines([w.word if i else " " + w.word.lstrip() for i, w in enumerate(candidate)], rules.max_chars)
        return lines is not None and len(lines) <= rules.max_lines and candidate[-1].end - candidate[0].start <= rules.max_s

    def close() -> None:
        if current:
            tokens = [w.word if i else " " + w.word.lstrip() for i, w in enumerate(current)]
            lines = _split_lines(tokens, rules.max_chars) or ["".join(tokens).strip()]
            cues.append(Cue(current[0].start, current[-1].end, lines, current[0].speaker))
            current.clear()

    for w in words:
        if current:
            prev = current[-1]
            breaks = w.speaker != prev.speaker or w.start - prev.end > rules.pause_s
            # a sentence end after a cue of useful length is a natural place to cut
            sentence_end = prev.word.strip()[-1:] in ".!?" and prev.end - current[0].start >= 1.5
            if breaks or sentence_end or not fits(current + [w]):
                close()
        current.append(w)
    close()
    _fix_timing(cues, rules)
    return cues


def _fix_timing(cues: list[Cue], rules: CueRules) -> None:
    for i, cue in enumerate(cues):
        limit = cues[i + 1].start - rules.min_gap_s if i + 1 < len(cues) else float("inf")
        if cue.end - cue.start < rules.min_s:
            cue.end = min(cue.start + rules.min_s, max(limit, cue.end))
        cue.end = min(cue.end, cue.start + rules.max_s)
        if i + 1 < len(cues) and cue.end > limit:
            cue.end = max(cue.start + 0.001, limit)


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_vtt(cues: list[Cue]) -> str:
    parts = ["WEBVTT", ""]
    for i, cue in enumerate(cues, 1):
        parts += [str(i), f"{_stamp(cue.start, '.')} --> {_stamp(cue.end, '.')}", *cue.lines, ""]
    return "\n".join(parts)


def to_srt(cues: list[Cue]) -> str:
    parts: list[str] = []
    for i, cue in enumerate(cues, 1):
        parts += [str(i), f"{_stamp(cue.start, ',')} --> {_stamp(cue.end, ',')}", *cue.lines, ""]
    return "\n".join(parts)
