"""Speech / music / silence spans of a track from VAD spans and a 10 ms level track.

Speech is where the VAD says so (it wins over level: pauses inside a sentence stay speech);
silence is where the RMS level stays under ``silence_db`` (``prism.audio.levels``); everything else is music or effects.
Runs shorter than ``min_span_s`` are absorbed into the span before them (or after, at the start),
so the spans tile the track without flicker.
"""

from __future__ import annotations

import numpy as np

from prism.audio.levels import WINDOW_S, is_silent
from prism.audio.speech import Span
from prism.timeline import runs

LABELS = ("silence", "music", "speech")


def segment_spans(level_db: np.ndarray, speech: list[Span], *, silence_db: float, min_span_s: float) -> list[dict]:
    n = level_db.size
    if n == 0:
        return []
    codes = np.where(is_silent(level_db, silence_db), 0, 1).astype(np.int8)
    for span in speech:
        a, b = int(round(span.start_s / WINDOW_S)), int(round(span.end_s / WINDOW_S))
        codes[max(0, a) : min(n, b)] = 2
    pieces: list[list[int]] = []  # [code, start, end)
    for code in range(3):
        pieces += [[code, a, b] for a, b in runs(codes == code)]
    pieces.sort(key=lambda p: p[1])
    min_len = max(1, int(round(min_span_s / WINDOW_S)))
    merged: list[list[int]] = []
    for piece in pieces:
        if merged and (piece[2] - piece[1] < min_len and piece[0] != 2 or merged[-1][0] == piece[0]):
            merged[-1][2] = piece[2]
        elif merged and merged[-1][2] - merged[-1][1] < min_len and merged[-1][0] != 2:
            piece[1] = merged[-1][1]
            merged[-1] = piece
        else:
            merged.append(piece)
    joined: list[list[int]] = []
    for piece in merged:
        if joined and joined[-1][0] == piece[0]:
            joined[-1][2] = piece[2]
        else:
            joined.append(piece)
    power = 10 ** (level_db.astype(np.float64) / 10)
    rows = []
    for code, a, b in joined:
        mean_power = float(power[a:b].mean())
        rows.append(
            {
                "label": LABELS[code],
                "start_s": round(a * WINDOW_S, 3),
                "end_s": round(b * WINDOW_S, 3),
                "duration_s": round((b - a) * WINDOW_S, 3),
                "level_dbfs": round(10 * np.log10(max(mean_power, 1e-12)), 2),
            }
        )
    return rows
