"""Picture checks over the title's single visual pass (no decode of their own).

- Colour bars: the 48x27 RGB frames every frame of the pass keeps (``VisualPass.frames_small``);
  bars are large uniform areas, and 48 columns resolve 7 or 8 bars with 4-6 columns each.
- Photosensitive flashing: the same frames, as relative luminance (sRGB linearised), in the
  spirit of ITU-R BT.1702 / Ofcom / WCAG 2.3.1: a transition is a change of at least 10 % of
  white luminance, the darker side under 0.8, over at least a quarter of the screen; a flash is a
  pair of opposing transitions, and more than 3 flashes (over 6 transitions) in any one-second
  window fails. Red flashes: the same count on saturated red (R/(R+G+B) >= 0.8, a change of
  (R-G-B)*320 over 20, WCAG's definition).
- Active picture area (letterbox, pillarbox): ``VisualPass.active_box``, the bounds of the rows
  and columns of the 128x72 analysis frame that carry picture, per frame; per shot the union over
  its non-black frames, so a dark scene does not read as a bar.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism.qc import Finding
from prism.timeline import runs

CHUNK = 2048
BAR_CODES = (7, 6, 3, 2, 5, 4, 1)  # white, yellow, cyan, green, magenta, red, blue as RGB bits
BAR_NAMES = {
    "smpte": "SMPTE EG 1 bars",
    "arib": "ARIB STD-B28 / SMPTE RP 219 bars",
    "ebu": "EBU bars (8 full-field bars)",
    "full_field": "full-field 7-bar bars",
}


def _chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)


def bar_variant(frame: np.ndarray) -> tuple[str | None, float]:
    """The colour-bar pattern one small RGB frame (H, W, 3) shows, with the share of its columns
    that fit the pattern; (None, 0.0) when it shows none."""
    h, w = frame.shape[:2]
    top = frame[round(h * 0.07) : round(h * 0.55)].astype(np.float32)  # inside the upper bars of every variant
    col = np.median(top, axis=0)  # (W, 3)
    if float(np.abs(top - col).mean()) > 14.0:  # bars are vertically uniform
        return None, 0.0
    peak = float(np.percentile(col, 95))
    if peak < 100:
        return None, 0.0
    on, off = col > 0.6 * peak, col < 0.3 * peak
    code = np.where((on | off).all(axis=1), on[:, 0] * 4 + on[:, 1] * 2 + on[:, 2], -1)
    # runs of one code, transition columns (a code of one column, or none) left out
    spans: list[tuple[int, int, int]] = []  # code, first column, end column
    c = 0
    while c < w:
        e = c
        while e + 1 < w and code[e + 1] == code[c]:
            e += 1
        if code[c] >= 0 and e - c + 1 >= 2:
            if spans and spans[-1][0] == code[c]:
                spans[-1] = (int(code[c]), spans[-1][1], e + 1)
            else:
                spans.append((int(code[c]), c, e + 1))
        c = e + 1
    codes = [s[0] for s in spans]
    for i in range(len(codes) - len(BAR_CODES) + 1):
        if tuple(codes[i : i + len(BAR_CODES)]) != BAR_CODES:
            continue
        bars = spans[i : i + len(BAR_CODES)]
        widths = [b[2] - b[1] for b in bars]
        if max(widths) > 2.5 * min(widths):
            continue
        first, last = bars[0][1], bars[-1][2]
        after = spans[i + len(BAR_CODES)] if i + len(BAR_CODES) < len(spans) else None
        low = frame[round(h * 0.8) : round(h * 0.95)].astype(np.float32)
        lower_differs = float(np.abs(np.median(low, axis=0) - col).mean()) > 40.0
        if after is not None and after[0] == 0 and after[2] - after[1] >= 0.5 * min(widths) and not lower_differs:
            variant, last = "ebu", after[2]
        elif not lower_differs:
            variant = "full_field"
        elif (last - first) >= 0.85 * w:
            variant = "smpte"
        else:
            variant = "arib"
        return variant, round((last - first) / w, 3)
    return None, 0.0


def colour_bars(frames: np.ndarray, times: np.ndarray, end_s: float, min_s: float = 0.4) -> list[Finding]:
    """Spans of colour bars, one finding per span (its most frequent variant)."""
    n = frames.shape[0]
    variants: list[str | None] = [None] * n
    widths = np.zeros(n, np.float32)
    for a, b in _chunks(n):
        chunk = np.asarray(frames[a:b])
        top = chunk[:, round(chunk.shape[1] * 0.07) : round(chunk.shape[1] * 0.55)].astype(np.float32)
        # cheap screen first: bars are bright, saturated and vertically uniform
        vertical = np.abs(top - top.mean(axis=1, keepdims=True)).mean(axis=(1, 2, 3))
        spread = (top.max(axis=3) - top.min(axis=3)).mean(axis=(1, 2))
        for k in np.flatnonzero((vertical < 20.0) & (spread > 40.0)):
            variants[a + k], widths[a + k] = bar_variant(chunk[k])
    found = np.array([v is not None for v in variants])
    out = []
    for start, stop in runs(found):
        s, e = float(times[start]), float(times[stop]) if stop < n else end_s
        if e - s + 1e-9 < min_s:
            continue
        names = [v for v in variants[start:stop] if v]
        variant = max(set(names), key=names.count)
        share = names.count(variant) / len(names)
        out.append(
            Finding(
                "colour_bars",
                s,
                e,
                float(np.median(widths[start:stop])),
                "bar_width_share",
                f"{variant}: {BAR_NAMES[variant]}",
                round(share, 3),
                (start + stop) // 2,
            )  # fmt: skip
        )
    return out


_SRGB = np.array(
    [(c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in range(256)], np.float32
)


@dataclass(frozen=True)
class FlashLimits:
    """BT.1702-style limits; ``area`` is the share of the screen a transition must cover."""

    luminance_step: float = 0.1
    darker_below: float = 0.8
    red_step: float = 20.0
    area: float = 0.25
    max_transitions_per_s: int = 6  # more than 3 flashes = more than 6 opposing transitions


def transitions(frames: np.ndarray, limits: FlashLimits = FlashLimits()) -> tuple[np.ndarray, np.ndarray]:
    """Per frame (vs the previous), the direction (+1, -1, 0) of a general and of a red transition."""
    n = frames.shape[0]
    general = np.zeros(n, np.int8)
    red = np.zeros(n, np.int8)
    prev_lum = prev_red = None
    for a, b in _chunks(n):
        lin = _SRGB[np.asarray(frames[a:b])]  # (k, H, W, 3) linear RGB
        lum = lin @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        total = lin.sum(axis=3)
        redness = np.where(lin[..., 0] >= 0.8 * np.maximum(total, 1e-6), np.maximum(lin[..., 0] - lin[..., 1] - lin[..., 2], 0) * 320, 0)  # fmt: skip
        if prev_lum is not None:
            lum = np.concatenate([prev_lum, lum])
            redness = np.concatenate([prev_red, redness])
        dl = lum[1:] - lum[:-1]
        darker = np.minimum(lum[1:], lum[:-1])
        sig = (np.abs(dl) >= limits.luminance_step) & (darker < limits.darker_below)
        up, down = (sig & (dl > 0)).mean(axis=(1, 2)), (sig & (dl < 0)).mean(axis=(1, 2))
        dr = redness[1:] - redness[:-1]
        r_up, r_down = (dr > limits.red_step).mean(axis=(1, 2)), (dr < -limits.red_step).mean(axis=(1, 2))
        offset = a if prev_lum is not None else a + 1
        general[offset : offset + dl.shape[0]] = _direction(up, down, limits.area)
        red[offset : offset + dl.shape[0]] = _direction(r_up, r_down, limits.area)
        prev_lum, prev_red = lum[-1:], redness[-1:]
    return general, red


def _direction(up: np.ndarray, down: np.ndarray, area: float) -> np.ndarray:
    return np.where((up >= area) & (up >= down), 1, np.where(down >= area, -1, 0)).astype(np.int8)


def flash_spans(direction: np.ndarray, times: np.ndarray, end_s: float, limit: int) -> list[tuple[int, int, int]]:
    """[first, end) frames of the spans where some one-second window holds more than ``limit``
    opposing transitions, with the most any window held. Consecutive transitions the same way
    (a ramp over several frames) count once."""
    frames_at = np.flatnonzero(direction)
    kept: list[int] = []
    last = 0
    for f in frames_at:
        if direction[f] != last:
            kept.append(int(f))
            last = int(direction[f])
    if len(kept) <= limit:
        return []
    t = times[kept]
    out: list[tuple[int, int, int]] = []
    for i in range(len(kept)):
        j = int(np.searchsorted(t, t[i] + 1.0 - 1e-6, side="left"))  # transitions in [t_i, t_i + 1 s)
        count = j - i
        if count > limit:
            first, end = kept[i], kept[j - 1] + 1
            if out and first <= out[-1][1]:
                out[-1] = (out[-1][0], max(end, out[-1][1]), max(count, out[-1][2]))
            else:
                out.append((first, end, count))
    return out


def flashing(frames: np.ndarray, times: np.ndarray, end_s: float, limits: FlashLimits = FlashLimits()) -> list[Finding]:
    general, red = transitions(frames, limits)
    out = []
    n = frames.shape[0]
    for rule, direction in (("flashing", general), ("red_flashing", red)):
        for first, end, count in flash_spans(direction, times, end_s, limits.max_transitions_per_s):
            out.append(
                Finding(
                    rule,
                    float(times[first - 1] if first else times[0]),
                    float(times[end]) if end < n else end_s,
                    count / 2,
                    "flashes_per_s",
                    f"up to {count} opposing transitions in one second over >= "
                    f"{limits.area:.0%} of the screen (limit {limits.max_transitions_per_s})",
                    1.0,
                    first,
                )  # fmt: skip
            )
    return out


def active_area(
    box: np.ndarray, black: np.ndarray, shots: list[tuple[int, int]], times: np.ndarray, end_s: float,
    frame_w: int, frame_h: int, grid: tuple[int, int], min_bar: int = 1,
) -> list[Finding]:  # fmt: skip
    """Letterbox and pillarbox spans from per-frame active boxes (top, bottom, left, right on a
    ``grid`` of (rows, columns)), per shot; a change of active area between shots is a finding too."""
    rows, cols = grid
    per_shot: list[tuple[int, int, tuple[int, int, int, int] | None]] = []
    for a, b in shots:
        keep = ~black[a:b] & (box[a:b, 1] > box[a:b, 0])
        if not keep.any():
            per_shot.append((a, b, None))
            continue
        sel = box[a:b][keep]
        per_shot.append(
            (a, b, (int(sel[:, 0].min()), int(sel[:, 1].max()), int(sel[:, 2].min()), int(sel[:, 3].max())))
        )
    out: list[Finding] = []
    merged: list[list] = []
    for a, b, bx in per_shot:
        if bx is None:
            continue
        if merged and merged[-1][2] == bx:
            merged[-1][1] = b
        else:
            merged.append([a, b, bx])
    for k, (a, b, (top, bottom, left, right)) in enumerate(merged):
        s, e = float(times[a]), float(times[b]) if b < len(times) else end_s
        aspect = (frame_w * (right - left) / cols) / max(1e-6, frame_h * (bottom - top) / rows)
        mid = (a + b) // 2
        if top >= min_bar and rows - bottom >= min_bar:
            out.append(Finding("letterbox", s, e, round(aspect, 3), "active_aspect_ratio",
                               f"bars {top / rows:.1%} top, {(rows - bottom) / rows:.1%} bottom", 1.0, mid))  # fmt: skip
        if left >= min_bar and cols - right >= min_bar:
            out.append(Finding("pillarbox", s, e, round(aspect, 3), "active_aspect_ratio",
                               f"bars {left / cols:.1%} left, {(cols - right) / cols:.1%} right", 1.0, mid))  # fmt: skip
        if k:
            pt, pb, pl, pr = merged[k - 1][2]
            if max(abs(pt - top), abs(pb - bottom), abs(pl - left), abs(pr - right)) >= min_bar:
                out.append(Finding("active_area_change", s, s, round(aspect, 3), "active_aspect_ratio",
                                   f"active area rows {pt}-{pb}, cols {pl}-{pr} -> rows {top}-{bottom}, cols {left}-{right} "
                                   f"of {rows}x{cols}", 1.0, a))  # fmt: skip
    return out


_IDET = re.compile(
    r"Multi frame detection:\s*TFF:\s*(\d+)\s*BFF:\s*(\d+)\s*Progressive:\s*(\d+)\s*Undetermined:\s*(\d+)"
)


def sampled_idet(path: Path, duration_s: float, windows: int = 3, window_s: float = 4.0) -> tuple[int, int, int, int]:
    """ffmpeg's ``idet`` over a few short windows spread over the title (25 %, 50 %, 75 %): it needs
    full-resolution fields, which the visual pass never keeps, so this is a sampled read of about
    ``windows * window_s`` seconds, not a second decode of the title. (TFF, BFF, progressive, undetermined)."""
    from prism.media.tools import ffmpeg_exe

    totals = [0, 0, 0, 0]
    starts = (
        [duration_s * (k + 1) / (windows + 1) - window_s / 2 for k in range(windows)]
        if duration_s > 3 * window_s
        else [0.0]
    )
    for start in starts:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-nostdin", "-ss", f"{max(0.0, start):.3f}", "-t", f"{window_s:.3f}",
               "-i", str(path), "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", "idet", "-f", "null", "-"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        match = _IDET.search(proc.stderr)
        if match:
            totals = [t + int(v) for t, v in zip(totals, match.groups())]
    return totals[0], totals[1], totals[2], totals[3]


def interlacing(counts: tuple[int, int, int, int], end_s: float, min_frames: int = 20) -> list[Finding]:
    """Interlaced when most sampled frames read as interlaced with one consistent field order (fine
    synthetic detail can read as combing, but then both orders come up)."""
    tff, bff, progressive, _ = counts
    inter = tff + bff
    if inter + progressive < min_frames or inter < 0.6 * (inter + progressive) or max(tff, bff) < 0.8 * inter:
        return []
    order = "top field first" if tff >= bff else "bottom field first"
    return [Finding("interlaced", 0.0, end_s, round(inter / (inter + progressive), 3), "interlaced_share",
                    f"{order}: {inter} of {inter + progressive} sampled frames (idet: TFF {tff}, BFF {bff})")]  # fmt: skip
