"""Text checks on the title's keyframes (the shared PP-OCRv4 detector, ``prism.vision.text``).

The detector costs about a second a frame on one core at ``limit_side_len=360``, so it reads the
keyframes the ``keyframes`` stage already wrote (one to three per shot, full resolution, no decode
of its own), at most ``max_frames`` of them: every keyframe of the head and tail zones (slate,
opening and end credits) and an even sample of the rest (burnt-in subtitles).

- Slate: a still shot in the head zone whose keyframe is dense with text (>= ``SLATE_LINES`` lines).
- Credits: in the head and tail zones, a run of shots whose keyframes carry text lines spread over
  the frame (>= ``CREDIT_LINES`` lines): opening credits in the head, end credits in the tail.
- Burnt-in subtitles: a keyframe with a text line centred in the bottom band (its centre below 75 %
  of the height, horizontally centred), per shot; adjacent shots merged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prism.qc import Finding

SUBTITLE_BAND = (0.75, 0.97)
SLATE_LINES = 5  # a slate lists many fields (title, episode, date, duration, audio, aspect); credit cards fewer
CREDIT_LINES = 3


@dataclass(frozen=True)
class KeyframeText:
    shot: int
    frame: int
    time_s: float
    lines: int
    coverage: float
    bottom_centred: int  # lines centred in the bottom band
    stillness: float


def read_keyframe(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pick(keyframes: list[dict], head_s: float, tail_from_s: float, max_frames: int) -> list[dict]:
    """All keyframes of the head and tail zones, then an even sample of the rest, ``max_frames`` in all."""
    zones = [k for k in keyframes if k["time_s"] < head_s or k["time_s"] >= tail_from_s]
    rest = [k for k in keyframes if head_s <= k["time_s"] < tail_from_s]
    zones = zones[:max_frames]
    room = max_frames - len(zones)
    if room > 0 and rest:
        idx = np.unique(np.linspace(0, len(rest) - 1, min(room, len(rest))).round().astype(int))
        zones += [rest[i] for i in idx]
    return sorted(zones, key=lambda k: k["time_s"])


def measure(detection, shot: int, frame: int, time_s: float, stillness: float) -> KeyframeText:
    bottom = [b for b in detection.in_band(*SUBTITLE_BAND) if abs((b.x0 + b.x1) / 2 - 0.5) < 0.12 and b.x1 - b.x0 < 0.9]
    return KeyframeText(shot, frame, time_s, len(detection.boxes), detection.coverage(), len(bottom), stillness)


def text_findings(
    texts: list[KeyframeText], shots: list[tuple[float, float]], head_s: float, tail_from_s: float,
    slate_lines: int = SLATE_LINES, credit_lines: int = CREDIT_LINES,
) -> list[Finding]:  # fmt: skip
    out: list[Finding] = []
    by_shot: dict[int, list[KeyframeText]] = {}
    for t in texts:
        by_shot.setdefault(t.shot, []).append(t)

    def spans(flagged: list[int]) -> list[tuple[int, int]]:
        merged: list[list[int]] = []
        for s in sorted(flagged):
            if merged and s == merged[-1][1] + 1:
                merged[-1][1] = s
            else:
                merged.append([s, s])
        return [(a, b) for a, b in merged]

    slates = [
        s for s, ts in by_shot.items()
        if shots[s][0] < head_s and any(t.lines >= slate_lines and t.stillness >= 0.8 for t in ts)
    ]  # fmt: skip
    for a, b in spans(slates):
        best = max((t for s in range(a, b + 1) for t in by_shot.get(s, [])), key=lambda t: t.lines)
        out.append(Finding("slate", shots[a][0], shots[b][1], float(best.lines), "text_lines",
                           f"a still card with {best.lines} text lines", 1.0, best.frame))  # fmt: skip
    slate_shots = {s for a, b in spans(slates) for s in range(a, b + 1)}
    credit = [
        s for s, ts in by_shot.items()
        if s not in slate_shots and (shots[s][0] < head_s or shots[s][1] > tail_from_s)
        and max(t.lines for t in ts) >= credit_lines and max(t.bottom_centred for t in ts) < max(t.lines for t in ts)
    ]  # fmt: skip
    for a, b in spans(credit):
        ts = [t for s in range(a, b + 1) for t in by_shot.get(s, [])]
        kind = "opening" if shots[a][0] < head_s else "end"
        out.append(Finding("credits", shots[a][0], shots[b][1], round(float(np.mean([t.coverage for t in ts])), 4),
                           "text_coverage", f"{kind} credits: {max(t.lines for t in ts)} text lines at most",
                           1.0, ts[len(ts) // 2].frame))  # fmt: skip
    subs = [s for s, ts in by_shot.items() if any(t.bottom_centred for t in ts) and s not in slate_shots]
    for a, b in spans(subs):
        ts = [t for s in range(a, b + 1) for t in by_shot.get(s, []) if t.bottom_centred]
        out.append(Finding("burnt_in_subtitles", shots[a][0], shots[b][1], float(len(ts)), "keyframes",
                           "text centred in the bottom band", 1.0, ts[0].frame))  # fmt: skip
    return out
