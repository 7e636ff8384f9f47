"""The one definition of silence: 10 ms windows of the mono mix whose RMS level is under a threshold.

The ``cues`` stage reports silent runs of at least ``silence_min_s`` (content QC: dead air,
-60 dBFS by default); the ``audio`` stage labels the quiet parts of its speech / music /
silence segments (-50 dBFS by default, short runs absorbed). Thresholds and minimum durations
are each stage's parameters; the window, the level and the comparison are defined here once.
"""

from __future__ import annotations

import numpy as np

from prism.timeline import frame_level_db, runs

WINDOW_S = 0.01  # one level per 10 ms


def level_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level (dBFS) of each whole 10 ms window of mono float samples."""
    return frame_level_db(samples, sample_rate, WINDOW_S)


def is_silent(level: np.ndarray, silence_db: float) -> np.ndarray:
    """Which 10 ms windows are silence."""
    return level < silence_db


def silent_runs(level: np.ndarray, silence_db: float, min_s: float) -> list[tuple[int, int]]:
    """``[start, end)`` window ranges of silence lasting at least ``min_s``."""
    return [(a, b) for a, b in runs(is_silent(level, silence_db)) if (b - a) * WINDOW_S + 1e-9 >= min_s]
