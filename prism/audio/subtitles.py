"""Subtitles from a word-timed transcript: WebVTT and SRT with broadcast-style line rules.

Cues follow common localization style guides (Netflix timed-text style: at most two lines of
16 characters for Korean and Chinese, 13 for Japanese, 42 for Latin scripts; a reading speed of
at most 12 characters/s for Korean, 20 for Latin scripts): a cue lasts ``min_s``..``max_s``
seconds, a new cue starts at a speaker change or a pause, and cues prefer to end at sentence or
clause punctuation. Times come from the word timings, so a cue never starts before its first
word is spoken; a cue read too fast is held on screen into the following pause where there is
one. With the title's shot changes, cue edges within 12 frames of a change move onto it (an
in-cue on the change, an out-cue two frames before it), so no cue flashes across a cut.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from prism.audio.speech import Segment, Word


@dataclass(frozen=True)
class CueRules:
    max_chars: int = 42
    max_lines: int = 2
    max_cps: float = 20.0  # reading speed: characters per second a cue may ask of a viewer
    spaced: bool = True  # the script separates words with spaces (lines break only there)
    min_s: float = 1.0
    max_s: float = 7.0
    pause_s: float = 1.0  # a longer pause between words starts a new cue
    min_gap_s: float = 0.04  # keep cues from touching (two frames at 50 fps)


# language -> (characters per line, characters per second); Netflix timed-text style guides
LANGUAGE_RULES = {"ko": (16, 12.0), "zh": (16, 9.0), "yue": (16, 9.0), "ja": (13, 4.0), "th": (35, 15.0)}
LATIN_RULES = (42, 20.0)
UNSPACED = {"zh", "yue", "ja", "th"}


def rules_for(language: str | None, *, max_chars: int = 0, max_cps: float = 0.0) -> CueRules:
    """The cue rules for a language; explicit values (non-zero) win over the language's."""
    chars, cps = LANGUAGE_RULES.get(language or "", LATIN_RULES)
    return CueRules(max_chars=max_chars or chars, max_cps=max_cps or cps, spaced=language not in UNSPACED)


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]
    speaker: str | None = None

    @property
    def chars(self) -> int:
        return sum(len(line) for line in self.lines)

    @property
    def cps(self) -> float:
        return self.chars / max(self.end - self.start, 1e-3)


def _words(segments: list[Segment]) -> list[Word]:
    out = []
    for seg in segments:
        for w in seg.words:
            if w.word.strip():
                out.append(w)
    return out


def _split_lines(tokens: list[str], max_chars: int, spaced: bool = True) -> list[str] | None:
    """One line if it fits, else the most balanced two-line break; None if it cannot fit.

    ``tokens`` are Whisper's word strings with their own leading spaces ("o", "'clock" join
    without one), so lines break only where a token starts with a space (anywhere between
    tokens for scripts written without spaces).
    """
    one = "".join(tokens).strip()
    if len(one) <= max_chars:
        return [one]
    best = None
    for k in range(1, len(tokens)):
        if spaced and not tokens[k].startswith(" "):
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
        tokens = [w.word if i else " " + w.word.lstrip() for i, w in enumerate(candidate)]
        lines = _split_lines(tokens, rules.max_chars, rules.spaced)
        return (
            lines is not None
            and len(lines) <= rules.max_lines
            and candidate[-1].end - candidate[0].start <= rules.max_s
        )

    def close() -> None:
        if current:
            tokens = [w.word if i else " " + w.word.lstrip() for i, w in enumerate(current)]
            lines = _split_lines(tokens, rules.max_chars, rules.spaced) or ["".join(tokens).strip()]
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
        wanted = max(rules.min_s, cue.chars / rules.max_cps)  # long enough to be read
        if cue.end - cue.start < wanted:
            cue.end = min(cue.start + wanted, max(limit, cue.end))
        cue.end = min(cue.end, cue.start + rules.max_s)
        if i + 1 < len(cues) and cue.end > limit:
            cue.end = max(cue.start + 0.001, limit)


def snap_to_shots(cues: list[Cue], changes: list[float], fps: float, frames: int, rules: CueRules) -> int:
    """Move cue edges within ``frames`` of a shot change onto it; returns how many cues moved.

    An in-cue near a change starts on the change; an out-cue near a change ends two frames
    before it (or 12+ frames after it, if ending before would leave the cue too short). When
    several changes are near one edge, the nearest position clear of all of them wins; failing
    that, the nearest one where no change falls in the cue's first or last ``frames``. Cues keep
    ``min_gap_s`` between them and ``min_s``..``max_s`` lengths; an edge that cannot move
    without breaking one of those stays where it is.
    """
    if not cues or not changes or frames <= 0 or fps <= 0:
        return 0
    window, two, eps = frames / fps, 2 / fps, 1e-6
    changes = sorted(changes)

    def around(t: float) -> list[float]:
        lo, hi = bisect.bisect_right(changes, t - window + eps), bisect.bisect_left(changes, t + window - eps)
        return changes[lo:hi]

    def clean_start(t: float) -> bool:
        return all(abs(c - t) < eps for c in around(t))

    def uncrossed_start(t: float) -> bool:
        return all(c <= t + eps for c in around(t))

    def clean_end(t: float) -> bool:
        return all(abs(c - two - t) < eps for c in around(t))

    def uncrossed_end(t: float) -> bool:
        return all(c >= t - eps for c in around(t))

    moved = 0
    for i, cue in enumerate(cues):
        before = (cue.start, cue.end)
        prev_end = cues[i - 1].end if i else 0.0
        next_start = cues[i + 1].start if i + 1 < len(cues) else float("inf")
        if not clean_start(cue.start):
            fits = [
                c
                for c in sorted(around(cue.start), key=lambda c: abs(c - cue.start))
                if prev_end + rules.min_gap_s <= c < cue.end - two
            ]
            best = next((c for c in fits if clean_start(c)), None)
            if best is None and not uncrossed_start(cue.start):
                best = next((c for c in fits if uncrossed_start(c)), None)
            if best is not None:
                cue.start = best
        if not clean_end(cue.end):
            shortest = min(rules.min_s, cue.end - cue.start)
            options = sorted(
                {x for c in around(cue.end) for x in (c - two, c + window)}, key=lambda t: abs(t - cue.end)
            )
            fits = [
                t
                for t in options
                if cue.start + shortest <= t <= min(next_start - rules.min_gap_s, cue.start + rules.max_s)
            ]
            # best: clear of every change; else at least not crossing one in the cue's last frames
            best = next((t for t in fits if clean_end(t)), None)
            if best is None and not uncrossed_end(cue.end):
                best = next((t for t in fits if uncrossed_end(t)), None)
            if best is not None:
                cue.end = best
        moved += (cue.start, cue.end) != before
    return moved


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
