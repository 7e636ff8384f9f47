"""Audio checks from the track's single shared decode (``prism.audio.pcm.TrackStream``).

Per-channel faults come from its channel branch (``ChannelStats``: RMS, peak and flat factor per
channel per second, stereo correlation); the line-up tone from its 16 kHz mono PCM. Windows are
one second, so spans are to the second; a fault shorter than ``min_windows`` seconds is left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from prism.audio.pcm import ChannelStats
from prism.qc import Finding
from prism.timeline import runs

LFE_OF_6 = 3  # 5.1 in ffmpeg's order: FL FR FC LFE BL BR; a quiet LFE is normal
SIGNAL_DB = -45.0  # a channel this loud carries programme
CLIP_PEAK_DB = -0.1
CLIP_FLAT_DB = 1.0
TONE_HZ, TONE_TOLERANCE_HZ = 1000.0, 20.0  # EBU Tech 3304 / SMPTE RP 155 line-up frequency
TONE_WINDOW_S = 0.5
TONE_PURITY = 0.9


def _spans(mask: np.ndarray, times: np.ndarray, step: float, min_windows: int) -> list[tuple[int, int, float, float]]:
    return [(a, b, float(times[a]), float(times[b - 1]) + step) for a, b in runs(mask) if b - a >= min_windows]


def channel_findings(
    stats: ChannelStats, start_s: float, silent_db: float, min_windows: int = 2, track: int = 0
) -> list[Finding]:
    """Silent channel, polarity-inverted / out-of-phase / dual-mono stereo and clipping."""
    if not stats.times:
        return []
    times = np.asarray(stats.times) - stats.times[0] + start_s
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    rms = np.array([[np.nan if v is None else v for v in row] for row in stats.values.get("RMS_level", [])], float)
    peak = np.array([[np.nan if v is None else v for v in row] for row in stats.values.get("Peak_level", [])], float)
    flat = np.array([[np.nan if v is None else v for v in row] for row in stats.values.get("Flat_factor", [])], float)
    if rms.size == 0:
        return []
    level = np.nan_to_num(rms, nan=-200.0)  # digital silence has no RMS level
    out: list[Finding] = []
    chans = level.shape[1]
    for c in range(chans):
        if chans == 6 and c == LFE_OF_6:
            continue
        others = np.delete(level, c, axis=1)
        if others.size == 0:
            continue
        quiet = (level[:, c] < silent_db) & (others.max(axis=1) > SIGNAL_DB)
        for a, b, s, e in _spans(quiet, times, step, min_windows):
            out.append(Finding("silent_channel", s, e, float(level[a:b, c].max()), "max_rms_dbfs",
                               f"track {track} channel {c + 1} of {chans} silent while others carry signal"))  # fmt: skip
    clipped = (np.nan_to_num(peak, nan=-200.0) >= CLIP_PEAK_DB) & (np.nan_to_num(flat, nan=0.0) > CLIP_FLAT_DB)
    for a, b, s, e in _spans(clipped.any(axis=1), times, step, 1):
        which = sorted({int(c) + 1 for c in np.flatnonzero(clipped[a:b].any(axis=0))})
        out.append(Finding("clipping", s, e, float(np.nanmax(flat[a:b])), "flat_factor_db",
                           f"track {track} channel(s) {which} at full scale for consecutive samples"))  # fmt: skip
    if chans == 2 and stats.phase:
        phase = np.array([np.nan if v is None else v for v in stats.phase], float)[: level.shape[0]]
        both = (level[: phase.size] > SIGNAL_DB).all(axis=1) & np.isfinite(phase)
        for check, mask, what in (
            ("phase_inverted", both & (phase <= -0.8), "one channel's polarity inverted (L = -R)"),
            ("out_of_phase", both & (phase > -0.8) & (phase < -0.2), "channels mostly out of phase"),
        ):
            for a, b, s, e in _spans(mask, times, step, min_windows):
                out.append(Finding(check, s, e, float(np.nanmean(phase[a:b])), "correlation", f"track {track}: {what}"))
        if both.sum() >= min_windows:
            ident = both & (phase >= 0.995) & (np.abs(level[: phase.size, 0] - level[: phase.size, 1]) < 0.5)
            if ident.sum() >= 0.9 * both.sum():
                out.append(Finding("dual_mono", float(times[0]), float(times[-1]) + step, float(np.nanmean(phase[both])),
                                   "correlation", f"track {track}: both channels carry the same signal ({ident.sum()} of {both.sum()} s)"))  # fmt: skip
    return out


def lineup_tone(blocks: Iterable[np.ndarray], rate: int, min_s: float = 1.0, track: int = 0) -> list[Finding]:
    """Spans of a steady 1 kHz sine (line-up tone), from mono PCM on the title clock."""
    win = int(TONE_WINDOW_S * rate)
    hann = np.hanning(win).astype(np.float32)
    freqs = np.fft.rfftfreq(win, 1.0 / rate)
    tone_bin = int(np.argmin(np.abs(freqs - TONE_HZ)))
    reach = int(np.ceil(TONE_TOLERANCE_HZ / (freqs[1] - freqs[0]))) + 2
    flags: list[bool] = []
    levels: list[float] = []
    carry = np.zeros(0, np.float32)
    for block in blocks:
        data = np.concatenate([carry, block.astype(np.float32, copy=False)])
        whole = data.shape[0] // win * win
        frames = data[:whole].reshape(-1, win)
        carry = data[whole:]
        if not frames.shape[0]:
            continue
        spec = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2
        total = spec.sum(axis=1) + 1e-20
        near = spec[:, max(0, tone_bin - reach) : tone_bin + reach + 1].sum(axis=1)
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
        db = 20 * np.log10(np.maximum(rms, 1e-10))
        flags += list((near / total >= TONE_PURITY) & (db > -50.0))
        levels += list(db)
    mask = np.array(flags, bool)
    out = []
    for a, b in runs(mask):
        if (b - a) * TONE_WINDOW_S + 1e-9 < min_s:
            continue
        lv = np.array(levels[a:b])
        out.append(Finding("lineup_tone", a * TONE_WINDOW_S, b * TONE_WINDOW_S, round(float(np.median(lv)), 2), "rms_dbfs",
                           f"track {track}: steady {TONE_HZ:.0f} Hz tone"))  # fmt: skip
    return out
