"""A self-contained HTML report of one processed title, for content-QC reviewers.

``write_report(title_dir)`` reads the artifacts by the contract's reading rule (a stage's files
only when it ``succeeded`` and lists them) and renders one HTML file with everything inline:
keyframe thumbnails as data URIs, the CSS, a few lines of JS and a timeline drawn once as plain
SVG. Nothing is fetched at view time. Parts whose stage did not run, was skipped or failed are
shown with that status instead of their content.

Large titles stay light: thumbnails are small WebP, the contact sheet is split into sections the
browser only lays out when scrolled to (``content-visibility``), images load lazily, and timeline
marks are merged per drawn pixel, so the SVG holds at most a few thousand shapes whatever the
shot count.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from prism import __version__
from prism.artifacts import atomic_write_bytes, read_manifest_checked
from prism.errors import PrismError, StorageError
from prism.stages.base import ReportLane, Stage, registry

log = logging.getLogger(__name__)

TARGET_LUFS = -23.0  # EBU R128 programme loudness
SECTION_SHOTS = 100  # shot cards per contact-sheet section
PLOT_X0, PLOT_X1 = 110.0, 1190.0  # timeline plot area in SVG user units
LUFS_FLOOR, LUFS_CEIL = -60.0, 0.0
CUE_COLORS = {"black": "#222", "frozen": "#1f77b4", "silence": "#9467bd"}
SEGMENT_COLORS = {"speech": "#2ca02c", "music": "#ff7f0e", "silence": "#c7c7c7"}
SPEAKER_COLORS = ("#e377c2", "#17becf", "#bcbd22", "#8c564b", "#7f7f7f", "#d62728", "#1f77b4", "#ff9896")
SPAN_COLORS = ("#6a3d9a", "#33a02c", "#e31a1c", "#1f78b4", "#ff7f00", "#b15928", "#a6cee3", "#fb9a99")
SECTION_ROWS = 500  # rows listed per stage section (the timeline draws them all)


class ReportError(PrismError):
    """The title cannot be reported (no manifest where one was expected)."""


@dataclass
class Part:
    """One stage's contribution: ``available`` when its artifacts may be read, else why not."""

    stage: str
    status: str  # succeeded | failed | skipped | not run
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.status == "succeeded"

    @property
    def note(self) -> str:
        return self.status if not self.reason else f"{self.status}: {self.reason}"


@dataclass
class SpanLane:
    """A registered stage's ``spans`` report lane: its rows, read by the reading rule, and how to draw them."""

    stage: str
    part: Part
    lane: ReportLane
    columns: tuple[str, ...]  # listed in the stage's section: its output's ``show`` columns, else the lane's
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.lane.title or self.stage

    @property
    def colors(self) -> dict[str, str]:
        """Label value -> colour, in sorted order (one colour when the lane has no label column)."""
        if not self.lane.label:
            return {self.title: SPAN_COLORS[0]}
        labels = sorted({str(r[self.lane.label]) for r in self.rows})
        return {label: SPAN_COLORS[i % len(SPAN_COLORS)] for i, label in enumerate(labels)}


@dataclass
class TitleData:
    """What the report shows, read from one title directory."""

    title_id: str
    title_dir: Path
    manifest: dict[str, Any]
    duration_s: float
    parts: dict[str, Part]
    shots: list[dict[str, Any]] = field(default_factory=list)
    keyframes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # shot -> rows by rank
    cues: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)  # dialogue track only
    turns: list[dict[str, Any]] = field(default_factory=list)
    transcript: dict[str, Any] | None = None
    loudness: dict[str, Any] | None = None
    short_term: list[tuple[float, float | None]] = field(default_factory=list)  # dialogue track
    dialogue_track: int = 0
    warnings: list[str] = field(default_factory=list)  # title-level problems QC must see (truncation)
    lanes: list[SpanLane] = field(default_factory=list)  # stages drawn by their declared ``spans`` lane
    drawn: list[tuple[str, ReportLane]] = field(default_factory=list)  # every stage's lane, in drawing order


def _read_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pylist()


def load_title(title_dir: str | Path) -> TitleData:
    """Read a title directory, following the reading rule of docs/artifacts.md."""
    tdir = Path(title_dir)
    try:
        manifest = read_manifest_checked(tdir)
    except StorageError as exc:
        raise ReportError(str(exc)) from exc
    if manifest is None:
        raise ReportError(f"{tdir}: no manifest.json (run `prism run` first or pass --out)")
    stages = manifest.get("stages", {})
    registered = sorted(registry().values(), key=lambda cls: (cls.display_order, cls.name))
    parts = {
        cls.name: Part(cls.name, stages[cls.name]["status"], stages[cls.name].get("reason"))
        if cls.name in stages
        else Part(cls.name, "not run")
        for cls in registered
    }
    drawn = sorted(
        ((cls.name, cls.report_lane) for cls in registered if cls.report_lane is not None),
        key=lambda item: (item[1].order, item[0]),
    )

    listed = {name: set(e.get("outputs") or []) for name, e in stages.items() if e.get("status") == "succeeded"}

    def artifact(stage: str, name: str) -> Path | None:
        return tdir / name if name in listed.get(stage, ()) and (tdir / name).exists() else None

    try:
        data = _load(tdir, manifest, artifact, parts)
        data.drawn = drawn
        for name, lane in drawn:
            if lane.kind == "spans":
                data.lanes.append(_span_lane(registry()[name], lane, parts[name], artifact))
        ends = [data.duration_s] + [r[lane.lane.end] for lane in data.lanes for r in lane.rows if r[lane.lane.end]]
        data.duration_s = max(ends)
        return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:  # a damaged artifact
        raise ReportError(f"{tdir}: cannot read artifacts: {type(exc).__name__}: {exc}") from exc


def _span_lane(cls: type[Stage], lane: ReportLane, part: Part, artifact: Any) -> SpanLane:
    output = cls.output(lane.output)
    columns = output.show or tuple(dict.fromkeys(c for c in (lane.label, lane.start, lane.end) if c))
    spans = SpanLane(cls.name, part, lane, columns)
    if path := artifact(cls.name, lane.output):
        wanted = list(dict.fromkeys([*columns, *(c for c in (lane.label, lane.start, lane.end) if c)]))
        spans.rows = sorted(_read_rows(path, wanted), key=lambda r: (r[lane.start] is None, r[lane.start] or 0.0))
    return spans


def _load(tdir: Path, manifest: dict[str, Any], artifact: Any, parts: dict[str, Part]) -> TitleData:
    stages = manifest.get("stages", {})
    probe = (manifest.get("source") or {}).get("probe") or {}
    # the decoded duration when a visual stage measured one: the container's claim can lie or be cut short
    measured = [
        (e.get("metrics") or {})
        for e in stages.values()
        if (e.get("metrics") or {}).get("decoded_duration_s") is not None
    ]
    declared = float(probe.get("duration_s") or 0.0)
    duration = float(measured[0]["decoded_duration_s"]) if measured else declared
    data = TitleData(manifest.get("title_id", tdir.name), tdir, manifest, duration, parts)
    data.warnings = sorted({m.get("truncation") or "file truncated" for m in measured if m.get("truncated")})
    if path := artifact("shots", "shots.parquet"):
        data.shots = _read_rows(path)
    if path := artifact("keyframes", "keyframes.parquet"):
        for row in sorted(_read_rows(path), key=lambda r: (r["shot_index"], r["rank"])):
            if artifact("keyframes", row["path"]):
                data.keyframes.setdefault(row["shot_index"], []).append(row)
    if path := artifact("cues", "cues.parquet"):
        data.cues = sorted(_read_rows(path), key=lambda r: (r["start_s"], r["cue_type"]))
    data.dialogue_track = int((stages.get("audio") or {}).get("params", {}).get("track", 0) or 0)
    if path := artifact("audio", "audio_segments.parquet"):
        data.segments = [r for r in _read_rows(path) if r["track"] == data.dialogue_track]
    if path := artifact("audio", "speakers.parquet"):
        data.turns = _read_rows(path)
    if path := artifact("audio", "transcript.json"):
        data.transcript = json.loads(path.read_text(encoding="utf-8"))
    if path := artifact("audio", "loudness.json"):
        data.loudness = json.loads(path.read_text(encoding="utf-8"))
    if path := artifact("audio", "loudness_short_term.parquet"):
        rows = _read_rows(path, ["track", "time_s", "short_term_lufs"])
        data.short_term = [(r["time_s"], r["short_term_lufs"]) for r in rows if r["track"] == data.dialogue_track]
    ends = [data.duration_s] + [r["end_s"] for r in data.shots[-1:]] + [r["end_s"] for r in data.segments[-1:]]
    data.duration_s = max(ends) or 1.0
    return data


# ---------------------------------------------------------------- formatting


def clock(t: float | None) -> str:
    """``HH:MM:SS.s``, the form the report uses everywhere (and its JS mirrors)."""
    if t is None or not math.isfinite(t):
        return "?"
    t = max(t, 0.0)
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:04.1f}"


def _num(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


@lru_cache(maxsize=1)
def _thumb_format() -> tuple[str, str]:
    from PIL import features

    return ("WEBP", "image/webp") if features.check("webp") else ("JPEG", "image/jpeg")


def thumbnail(path: Path, width: int) -> str:
    """A small data-URI thumbnail of a keyframe JPEG (decoded at reduced size via JPEG draft mode)."""
    from PIL import Image

    fmt, mime = _thumb_format()
    with Image.open(path) as img:
        height = max(1, round(width * img.height / img.width))
        img.draft("RGB", (width, height))
        small = img.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, fmt, quality=55, method=4) if fmt == "WEBP" else small.save(buf, fmt, quality=60, optimize=True)
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# ---------------------------------------------------------------- timeline (plain SVG)


class _Scale:
    def __init__(self, duration_s: float):
        self.duration = max(duration_s, 1e-6)

    def x(self, t: float) -> float:
        return PLOT_X0 + (PLOT_X1 - PLOT_X0) * min(max(t, 0.0), self.duration) / self.duration


def _merged_rects(
    spans: list[tuple[float, float, str]], scale: _Scale, y: float, h: float, fill: str, label: str
) -> list[str]:
    """One rect per run of spans that touch at drawing resolution (min width visible), with a tooltip."""
    out: list[str] = []
    group: list[tuple[float, float, str]] = []

    def flush() -> None:
        if not group:
            return
        x0, x1 = scale.x(group[0][0]), max(scale.x(group[-1][1]), scale.x(group[0][0]) + 1.0)
        tip = (
            group[0][2] if len(group) == 1 else f"{len(group)} {label} spans {clock(group[0][0])}–{clock(group[-1][1])}"
        )
        out.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{h:.1f}" fill="{fill}" '
            f'data-t="{group[0][0]:.3f}"><title>{escape(tip)}</title></rect>'
        )
        group.clear()

    for span in sorted(spans):
        if group and scale.x(span[0]) - max(scale.x(group[-1][1]), scale.x(group[0][0]) + 1.0) > 0.5:
            flush()
        group.append(span)
    flush()
    return out


def _lane_label(y: float, h: float, text: str) -> str:
    return f'<text class="lane" x="{PLOT_X0 - 8}" y="{y + h / 2 + 4:.1f}" text-anchor="end">{escape(text)}</text>'


def _absent(y: float, h: float, note: str) -> str:
    return (
        f'<rect x="{PLOT_X0}" y="{y}" width="{PLOT_X1 - PLOT_X0}" height="{h}" class="absent"/>'
        f'<text class="absent-note" x="{PLOT_X0 + 6}" y="{y + h / 2 + 4:.1f}">{escape(note[:160])}</text>'
    )


def _tick_step(duration: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if duration / step <= 12:
            return step
    return 14400.0


def _loudness_paths(points: list[tuple[float, float | None]], scale: _Scale, y: float, h: float) -> tuple[str, str]:
    """Short-term loudness per drawn pixel: a min–max band and the mean line; unmeasured spans leave gaps."""
    import numpy as np

    if not points:
        return "", ""
    arr = np.array([(t, np.nan if v is None else v) for t, v in points], dtype=np.float64)
    bins = int(min(PLOT_X1 - PLOT_X0, len(arr)))
    idx = np.clip((arr[:, 0] / scale.duration * bins).astype(int), 0, bins - 1)
    vals = np.clip(arr[:, 1], LUFS_FLOOR, LUFS_CEIL)
    ok = ~np.isnan(vals)
    seen = np.bincount(idx, minlength=bins)
    count = np.bincount(idx[ok], minlength=bins)
    mean = np.bincount(idx[ok], weights=vals[ok], minlength=bins) / np.maximum(count, 1)
    when = np.bincount(idx[ok], weights=arr[ok, 0], minlength=bins) / np.maximum(count, 1)
    lo, hi = np.full(bins, np.inf), np.full(bins, -np.inf)
    np.minimum.at(lo, idx[ok], vals[ok])
    np.maximum.at(hi, idx[ok], vals[ok])

    def py(v: float) -> float:
        return y + h * (LUFS_CEIL - v) / (LUFS_CEIL - LUFS_FLOOR)

    line, band, run = [], [], []
    for b in [*range(bins), -1]:
        if b >= 0 and count[b]:
            run.append(b)
        elif b >= 0 and not seen[b]:
            continue  # no sample falls in this pixel: not a gap in the measurement
        elif run:  # a measured-but-silent bin (or the end) closes the run
            xs = [scale.x(when[i]) for i in run]
            line.append("M" + " L".join(f"{x:.1f},{py(mean[i]):.1f}" for x, i in zip(xs, run)))
            upper = [f"{x:.1f},{py(hi[i]):.1f}" for x, i in zip(xs, run)]
            lower = [f"{x:.1f},{py(lo[i]):.1f}" for x, i in zip(reversed(xs), reversed(run))]
            band.append("M" + " L".join(upper + lower) + "Z")
            run = []
    return " ".join(line), " ".join(band)


class _Lanes:
    """The timeline's drawing state: the SVG elements so far and where the next lane goes."""

    lane_h, gap = 16.0, 6.0

    def __init__(self, data: TitleData):
        self.data, self.scale, self.parts = data, _Scale(data.duration_s), data.parts
        self.el: list[str] = []
        self.y = 22.0

    def lane(self, label: str) -> float:
        top = self.y
        self.el.append(_lane_label(top, self.lane_h, label))
        self.y += self.lane_h + self.gap
        return top


def timeline_svg(data: TitleData) -> Markup:
    """The whole timeline as one SVG string: axis, then each registered stage's lane in its declared order."""
    t = _Lanes(data)
    scale, el = t.scale, t.el
    step = _tick_step(data.duration_s)
    ticks = [i * step for i in range(int(data.duration_s // step) + 1)]
    for tick in ticks:
        x = scale.x(tick)
        el.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="16" y2="100%"/>')
        anchor = "end" if x > PLOT_X1 - 30 else "middle"
        el.append(
            f'<text class="tick" x="{x:.1f}" y="12" text-anchor="{anchor}">{clock(tick)[:-2] if step >= 1 else clock(tick)}</text>'
        )
    spans = {lane.stage: lane for lane in data.lanes}
    for stage, lane in data.drawn:
        if lane.kind == "spans":
            _draw_spans(t, spans[stage])
        else:
            _DRAWINGS[lane.kind](t, stage)
    y = t.y
    el.append(f'<line id="cursor" x1="-10" x2="-10" y1="16" y2="{y:.0f}"/>')
    return Markup(
        f'<svg id="timeline" viewBox="0 0 1200 {y:.0f}" role="img" aria-label="timeline" '
        f'data-x0="{PLOT_X0}" data-x1="{PLOT_X1}" data-duration="{data.duration_s:.3f}">'
        f'<rect id="hit" x="{PLOT_X0}" y="16" width="{PLOT_X1 - PLOT_X0}" height="{y - 16:.0f}" fill="transparent"/>'
        + "".join(el)
        + "</svg>"
    )


def _draw_spans(t: _Lanes, spans: SpanLane) -> None:
    """A declared ``spans`` lane: one rect per row (merged per drawn pixel), coloured by its label."""
    top = t.lane(spans.title)
    if not spans.part.available:
        t.el.append(_absent(top, t.lane_h, f"{spans.stage} {spans.part.note}"))
        return
    if not spans.rows:
        t.el.append(_absent(top, t.lane_h, f"no {spans.title} spans"))
        return
    lane = spans.lane
    for label, color in spans.colors.items():
        rows = [r for r in spans.rows if not lane.label or str(r[lane.label]) == label]
        marks = [
            (r[lane.start], r[lane.end], f"{label} {clock(r[lane.start])}–{clock(r[lane.end])}")
            for r in rows
            if r[lane.start] is not None and r[lane.end] is not None
        ]
        t.el.extend(_merged_rects(marks, t.scale, top, t.lane_h, color, label))


def _draw_shots(t: _Lanes, stage: str) -> None:
    data, scale, el, lane_h = t.data, t.scale, t.el, t.lane_h
    top = t.lane("shots")
    if not t.parts[stage].available:
        el.append(_absent(top, lane_h, f"shots {t.parts[stage].note}"))
        return
    dense = len(data.shots) > (PLOT_X1 - PLOT_X0) / 3
    if not dense:
        for s in data.shots:
            x0, x1 = scale.x(s["start_s"]), scale.x(s["end_s"])
            fill = "#dbe7f3" if s["shot_index"] % 2 == 0 else "#b7cde3"
            tip = f"shot {s['shot_index']} {clock(s['start_s'])}–{clock(s['end_s'])}"
            el.append(
                f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 0.5):.1f}" height="{lane_h}" fill="{fill}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    else:
        el.append(f'<rect x="{PLOT_X0}" y="{top}" width="{PLOT_X1 - PLOT_X0}" height="{lane_h}" fill="#dbe7f3"/>')
    fps = _fps(data)
    gradual = [
        (
            s["transition_start_frame"] / fps,
            s["transition_end_frame"] / fps,
            f"gradual transition into shot {s['shot_index']}",
        )
        for s in data.shots
        if s.get("transition_in") == "gradual" and s.get("transition_start_frame") is not None
    ]
    el += _merged_rects(gradual, scale, top, lane_h, "#f4b942", "gradual")
    el.append(_boundaries(data.shots[1:], scale, top, lane_h, dense))


def _draw_cues(t: _Lanes, stage: str) -> None:
    part = t.parts[stage]
    for cue_type in ("black", "frozen", "silence"):
        top = t.lane(f"{cue_type}")
        if not part.available:
            t.el.append(_absent(top, t.lane_h, f"cues {part.note}"))
            continue
        spans = [
            (
                c["start_s"],
                c["end_s"],
                f"{cue_type} {clock(c['start_s'])}–{clock(c['end_s'])} ({c['duration_s']:.1f} s)",
            )
            for c in t.data.cues
            if c["cue_type"] == cue_type
        ]
        t.el.extend(_merged_rects(spans, t.scale, top, t.lane_h, CUE_COLORS[cue_type], cue_type))


def _draw_audio(t: _Lanes, stage: str) -> None:
    """The dialogue track's speech/music/silence, its speakers, and the short-term loudness plot."""
    data, scale, el, lane_h = t.data, t.scale, t.el, t.lane_h
    audio = t.parts[stage]
    top = t.lane(f"audio (track {data.dialogue_track})")
    if not audio.available:
        el.append(_absent(top, lane_h, f"audio {audio.note}"))
    else:
        for label, color in SEGMENT_COLORS.items():
            spans = [
                (
                    s["start_s"],
                    s["end_s"],
                    f"{label} {clock(s['start_s'])}–{clock(s['end_s'])} ({s['level_dbfs']:.0f} dBFS)",
                )
                for s in data.segments
                if s["label"] == label
            ]
            el += _merged_rects(spans, scale, top, lane_h, color, label)

    top = t.lane("speakers")
    speakers = sorted({turn["speaker"] for turn in data.turns})
    if not audio.available:
        el.append(_absent(top, lane_h, f"audio {audio.note}"))
    elif not speakers:
        el.append(_absent(top, lane_h, "no speech turns"))
    for i, spk in enumerate(speakers):
        spans = [
            (turn["start_s"], turn["end_s"], f"{spk} {clock(turn['start_s'])}–{clock(turn['end_s'])}")
            for turn in data.turns
            if turn["speaker"] == spk
        ]
        el += _merged_rects(spans, scale, top, lane_h, SPEAKER_COLORS[i % len(SPEAKER_COLORS)], spk)

    loud_h = 90.0
    top = t.y
    for i, text in enumerate(("loudness", "short-term", "LUFS")):
        cls = "lane" if i == 0 else "lane small"
        el.append(f'<text class="{cls}" x="{PLOT_X0 - 30}" y="{top + 34 + 11 * i}" text-anchor="end">{text}</text>')
    el.append(f'<rect x="{PLOT_X0}" y="{top}" width="{PLOT_X1 - PLOT_X0}" height="{loud_h}" class="plot-bg"/>')
    if not audio.available or not data.short_term:
        el.append(_absent(top, loud_h, f"audio {audio.note}" if not audio.available else "no loudness measured"))
    else:
        for level in (-60, -40, -20, 0):
            ly = top + loud_h * (LUFS_CEIL - level) / (LUFS_CEIL - LUFS_FLOOR)
            el.append(f'<text class="tick" x="{PLOT_X0 - 4}" y="{ly + 3:.1f}" text-anchor="end">{level}</text>')
        line, band = _loudness_paths(data.short_term, scale, top, loud_h)
        el.append(f'<path d="{band}" class="loud-band"/><path d="{line}" class="loud-line"/>')
        target = (data.loudness or {}).get("target_lufs", TARGET_LUFS)
        ty = top + loud_h * (LUFS_CEIL - target) / (LUFS_CEIL - LUFS_FLOOR)
        el.append(f'<line x1="{PLOT_X0}" x2="{PLOT_X1}" y1="{ty:.1f}" y2="{ty:.1f}" class="target"/>')
        el.append(
            f'<text class="target-label" x="{PLOT_X1 - 4}" y="{ty - 3:.1f}" text-anchor="end">target {target:g} LUFS</text>'
        )
    t.y = top + loud_h + 8


_DRAWINGS = {"shots": _draw_shots, "cues": _draw_cues, "audio": _draw_audio}


def _boundaries(shots: list[dict[str, Any]], scale: _Scale, top: float, h: float, dense: bool) -> str:
    """Shot starts as ticks; when shots are denser than the drawing, as bars of cuts per 3-unit column."""
    if not shots:
        return ""
    if not dense:
        columns = sorted({round(scale.x(s["start_s"]) * 2) / 2 for s in shots})
        return '<path class="cut" d="' + " ".join(f"M{x:.1f},{top:.1f}v{h}" for x in columns) + '"/>'
    width = 3.0
    counts: dict[int, int] = {}
    for s in shots:
        col = int((scale.x(s["start_s"]) - PLOT_X0) // width)
        counts[col] = counts.get(col, 0) + 1
    peak = max(counts.values())
    per = scale.duration * width / (PLOT_X1 - PLOT_X0)
    bars = " ".join(
        f"M{PLOT_X0 + col * width + width / 2:.1f},{top + h:.1f}v-{max(h * n / peak, 1.5):.1f}"
        for col, n in sorted(counts.items())
    )
    tip = f"{len(shots) + 1} shots: bar height = shot boundaries per {per:.0f} s (at most {peak})"
    return f'<path class="cut-density" d="{bars}" stroke-width="{width - 0.6:.1f}"><title>{escape(tip)}</title></path>'


def _fps(data: TitleData) -> float:
    video = ((data.manifest.get("source") or {}).get("probe") or {}).get("video") or {}
    return float(video.get("fps") or 25.0) or 25.0


# ---------------------------------------------------------------- page


def _thumb_width(shot_count: int) -> int:
    """Smaller thumbnails for long titles, to keep a 2,000-shot report a few MB."""
    return 160 if shot_count <= 500 else 128


def _shot_cards(data: TitleData) -> list[dict[str, Any]]:
    import bisect

    width = _thumb_width(len(data.shots))
    starts = [c["start_s"] for c in data.cues]
    longest = max((c["end_s"] - c["start_s"] for c in data.cues), default=0.0)
    cards = []
    for s in data.shots:
        kfs = data.keyframes.get(s["shot_index"], [])
        lo = bisect.bisect_left(starts, s["start_s"] - longest)
        cues = sorted(
            {c["cue_type"] for c in data.cues[lo : bisect.bisect_left(starts, s["end_s"])] if c["end_s"] > s["start_s"]}
        )
        thumb = None
        if kfs:
            try:
                thumb = thumbnail(data.title_dir / kfs[0]["path"], width)
            except OSError as exc:
                log.warning("cannot read keyframe %s: %s", kfs[0]["path"], exc)
        cards.append({**s, "thumb": thumb, "keyframes": len(kfs), "cues": cues})
    return cards


def _stage_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, entry in manifest.get("stages", {}).items():
        metrics = entry.get("metrics") or {}
        flat = ", ".join(f"{k}={v}" for k, v in metrics.items() if not isinstance(v, (dict, list)))
        model = entry.get("model") or {}
        rows.append(
            {
                "name": name,
                "status": entry.get("status"),
                "reason": entry.get("reason"),
                "model": model.get("name") or "—",
                "model_version": model.get("version") or "",
                "duration_s": entry.get("duration_s"),
                "finished_at": entry.get("finished_at") or "",
                "metrics": flat,
                "metrics_json": json.dumps(metrics, indent=1, default=str) if metrics else "",
                "outputs": len(entry.get("outputs") or []),
            }
        )
    return rows


def _facts(data: TitleData, shots: int) -> list[str]:
    """The header line: length, picture, sound, counts, provenance; whatever the probe recorded."""
    m = data.manifest
    probe = (m.get("source") or {}).get("probe") or {}
    video = probe.get("video") or {}
    facts = [clock(data.duration_s)]
    if video.get("codec"):
        vfr = " (VFR)" if video.get("variable_frame_rate") else ""
        facts.append(
            f"{video.get('codec', '?')} {video.get('width', '?')}×{video.get('height', '?')} @ {_num(video.get('fps'), 3)} fps{vfr}"
        )
    if "audio_tracks" in probe:
        facts.append(f"{len(probe['audio_tracks'] or [])} audio track(s)")
    facts += [f"{shots} shots", f"{len(data.cues)} cues"]
    facts += [f"updated {m.get('updated_at') or '?'}", f"prism {m.get('prism_version') or '?'}"]
    return facts


def _loudness_rows(loudness: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not loudness:
        return []
    target = loudness.get("target_lufs", TARGET_LUFS)
    rows = []
    for t in loudness.get("tracks", []):
        i, tp = t.get("integrated_lufs"), t.get("true_peak_dbtp")
        rows.append(
            {
                **t,
                "integrated": _num(i),
                "delta": "—" if i is None else f"{i - target:+.1f} LU",
                "off_target": i is not None and abs(i - target) > 1.0,
                "lra": _num(t.get("lra_lu")),
                "true_peak": _num(tp),
                "peak_high": tp is not None and tp > -1.0,
            }
        )
    return rows


def _cell(value: Any) -> str:
    """A table cell as ``prism show`` prints it."""
    if value is None:
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


@lru_cache(maxsize=1)
def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("prism.report", "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["clock"] = clock
    env.filters["num"] = _num
    env.filters["cell"] = _cell
    return env.get_template("report.html.j2")


def render_report(title_dir: str | Path) -> str:
    """The report for the title in ``title_dir`` as one HTML string."""
    tdir = Path(title_dir)
    data = load_title(tdir)
    cards = _shot_cards(data)
    sections = [cards[i : i + SECTION_SHOTS] for i in range(0, len(cards), SECTION_SHOTS)]
    source = data.manifest.get("source") or {}
    segments = (data.transcript or {}).get("segments", [])
    script_data = {
        "duration": round(data.duration_s, 3),
        "shots": [[round(s["start_s"], 3), round(s["end_s"], 3)] for s in data.shots],
        "cues": [[c["cue_type"], round(c["start_s"], 3), round(c["end_s"], 3)] for c in data.cues],
        "turns": [[t["speaker"], round(t["start_s"], 3), round(t["end_s"], 3)] for t in data.turns],
        "segments": [[round(s["start"], 3), round(s["end"], 3)] for s in segments],
    }
    return _template().render(
        data=data,
        parts=data.parts,
        source=source,
        facts=_facts(data, len(cards)),
        sections=sections,
        shot_count=len(cards),
        keyframed=sum(1 for c in cards if c["thumb"]),
        timeline=timeline_svg(data),
        segments=segments,
        stages=_stage_rows(data.manifest),
        loudness=_loudness_rows(data.loudness),
        speakers=sorted({t["speaker"] for t in data.turns}),
        speaker_colors=SPEAKER_COLORS,
        cue_colors=CUE_COLORS,
        segment_colors=SEGMENT_COLORS,
        lanes=data.lanes,
        section_rows=SECTION_ROWS,
        script_data=Markup(json.dumps(script_data, separators=(",", ":")).replace("</", "<\\/")),
        prism_version=__version__,
    )


def default_report_path(title_dir: str | Path) -> Path:
    """``<out>/reports/<title_id>.html``: beside ``titles/``, so the title prefix keeps only contract files."""
    tdir = Path(title_dir)
    return tdir.parent.parent / "reports" / f"{tdir.name}.html"


def write_report(title_dir: str | Path, output: str | Path | None = None) -> Path:
    """Render the report for ``title_dir`` and write it atomically; returns the file written."""
    path = Path(output) if output is not None else default_report_path(title_dir)
    atomic_write_bytes(path, render_report(title_dir).encode("utf-8"))
    return path
