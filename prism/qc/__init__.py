"""Content QC: findings against a delivery spec.

Detectors (``prism.qc.visual``, ``prism.qc.audio``) turn the title's shared decodes into
:class:`Finding` rows; a :class:`Profile` (TOML under ``prism/qc/profiles/``: data, not code)
gives each rule its severity and limits; the verdict is the worst severity found
(``fail`` > ``warn`` > ``pass``; ``info`` findings never change it).
"""

from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from prism.errors import ConfigError

SEVERITIES = ("info", "warn", "fail")
VERDICTS = ("pass", "warn", "fail")


@dataclass(frozen=True)
class Profile:
    """A delivery spec: loudness and audio limits, picture rules and each rule's severity."""

    name: str
    description: str
    target_lufs: float
    tolerance_lu: float
    max_true_peak_dbtp: float
    channels: tuple[int, ...]
    min_tracks: int
    silent_channel_db: float
    clipping_run_samples: int
    head_tail_s: float
    head_tail_share: float
    max_black_s: float
    max_frozen_s: float
    severity: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {rule: s for rule, s in self.severity.items() if s not in SEVERITIES}
        if bad:
            raise ConfigError(f"QC profile {self.name!r}: severities must be one of {SEVERITIES}, got {bad}")
        if self.tolerance_lu <= 0 or self.head_tail_s < 0 or not 0 <= self.head_tail_share <= 0.5:
            raise ConfigError(
                f"QC profile {self.name!r}: tolerance_lu > 0, head_tail_s >= 0, head_tail_share in [0, 0.5]"
            )

    def severity_of(self, rule: str) -> str:
        return self.severity.get(rule, "info")

    def head_tail(self, duration_s: float) -> float:
        """How far from either end bars, slate, black, freezes and tone are part of the delivery, not the programme."""
        return min(self.head_tail_s, self.head_tail_share * duration_s)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str) -> Profile:
        try:
            lo, au, pic = data["loudness"], data["audio"], data["picture"]
            return cls(
                name=str(data["name"]),
                description=str(data.get("description", "")),
                target_lufs=float(lo["target_lufs"]),
                tolerance_lu=float(lo["tolerance_lu"]),
                max_true_peak_dbtp=float(lo["max_true_peak_dbtp"]),
                channels=tuple(int(c) for c in au["channels"]),
                min_tracks=int(au["min_tracks"]),
                silent_channel_db=float(au["silent_channel_db"]),
                clipping_run_samples=int(au["clipping_run_samples"]),
                head_tail_s=float(pic["head_tail_s"]),
                head_tail_share=float(pic["head_tail_share"]),
                max_black_s=float(pic["max_black_s"]),
                max_frozen_s=float(pic["max_frozen_s"]),
                severity={str(k): str(v) for k, v in data.get("severity", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"QC profile {origin}: missing or bad field {exc}") from exc


def profile_names() -> list[str]:
    return sorted(
        p.name[: -len(".toml")]
        for p in resources.files(__name__).joinpath("profiles").iterdir()
        if p.name.endswith(".toml")
    )


def load_profile(name: str) -> Profile:
    """A shipped profile by name (``service``, ``ebu_r128``, ``atsc_a85``) or a TOML file path."""
    if not name.endswith(".toml"):
        return _shipped(name)
    from pathlib import Path

    path = Path(name)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"QC profile {name}: cannot be read: {exc.strerror or exc}") from exc
    return _parse(text, str(path))


@functools.lru_cache(maxsize=8)
def _shipped(name: str) -> Profile:
    if name not in profile_names():
        raise ConfigError(f"unknown QC profile {name!r}; shipped: {profile_names()} (or a path to a .toml file)")
    return _parse(resources.files(__name__).joinpath("profiles", f"{name}.toml").read_text(), name)


def _parse(text: str, origin: str) -> Profile:
    try:
        return Profile.from_dict(tomllib.loads(text), origin)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"QC profile {origin}: not valid TOML: {exc}") from exc


@dataclass
class Finding:
    """One QC observation. ``check`` names what a detector saw (``colour_bars``, ``black``,
    ``loudness_integrated``); :func:`evaluate` names the ``rule`` it breaks under a profile
    (``colour_bars_in_programme``) and its ``severity``, so a title's findings can be judged
    against another profile without analysing it again."""

    check: str
    start_s: float
    end_s: float
    value: float | None = None  # the measured value, in ``unit``
    unit: str = ""
    detail: str = ""
    confidence: float = 1.0
    evidence_frame: int | None = None  # index in the visual pass of a frame that shows it
    rule: str = ""
    severity: str = "info"

    def row(self, fps: float) -> dict[str, Any]:
        return {
            "check": self.check,
            "rule": self.rule or self.check,
            "severity": self.severity,
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "duration_s": round(self.end_s - self.start_s, 6),
            "start_tc": timecode(self.start_s, fps),
            "end_tc": timecode(self.end_s, fps),
            "value": None if self.value is None or not math.isfinite(self.value) else float(self.value),
            "unit": self.unit,
            "confidence": float(self.confidence),
            "evidence_frame": self.evidence_frame,
            "detail": self.detail,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Finding:
        """A finding back from a qc_findings.parquet row (pyarrow's None or pandas' NaN for nulls)."""

        def known(v: Any) -> Any:
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        frame = known(row.get("evidence_frame"))
        return cls(
            row["check"], row["start_s"], row["end_s"], known(row.get("value")), row.get("unit") or "",
            row.get("detail") or "", known(row.get("confidence")) or 1.0, None if frame is None else int(frame),
        )  # fmt: skip


PLACED = ("colour_bars", "slate", "lineup_tone", "black", "frozen", "silence")  # allowed at head and tail only


def _rule(f: Finding, profile: Profile, duration_s: float) -> tuple[str, bool]:
    """The rule ``f`` falls under, and whether it breaks it (else it is recorded as info)."""
    if f.check in PLACED:
        zone = profile.head_tail(duration_s)
        inside = f.end_s > zone + 1e-6 and f.start_s < duration_s - zone - 1e-6
        if not inside:
            return f.check, False
        limit = {"black": profile.max_black_s, "frozen": profile.max_frozen_s}.get(f.check)
        if limit is not None and f.end_s - f.start_s > limit:
            return f"{f.check}_long_in_programme", True
        return f"{f.check}_in_programme", True
    if f.check == "loudness_integrated":
        return f.check, f.value is not None and abs(f.value - profile.target_lufs) > profile.tolerance_lu
    if f.check == "true_peak":
        return f.check, f.value is not None and f.value > profile.max_true_peak_dbtp
    if f.check == "channel_layout":
        return f.check, f.value is None or int(f.value) not in profile.channels
    if f.check == "audio_tracks":
        return f.check, (f.value or 0) < profile.min_tracks
    return f.check, True


def evaluate(findings: list[Finding], profile: Profile, duration_s: float) -> str:
    """Judge ``findings`` against ``profile``: each one's rule and severity; the verdict
    (pass, warn, fail) is the worst severity of the rules broken."""
    for f in findings:
        f.rule, broken = _rule(f, profile, duration_s)
        f.severity = profile.severity_of(f.rule) if broken else "info"
    worst = {f.severity for f in findings}
    return "fail" if "fail" in worst else "warn" if "warn" in worst else "pass"


def _drop_frame(fps: float) -> tuple[int, bool]:
    nominal = max(1, round(fps))
    drop = nominal in (30, 60) and abs(fps - nominal * 1000 / 1001) < 0.005
    return nominal, drop


def timecode(seconds: float, fps: float) -> str:
    """SMPTE ST 12 timecode of the frame at ``seconds`` on the title clock (00:00:00:00 at its first
    frame); drop-frame (``;``) at 29.97 and 59.94 fps, so the clock stays on wall time."""
    nominal, drop = _drop_frame(fps if fps > 0 else 25.0)
    frame = max(0, round(seconds * (fps if fps > 0 else 25.0)))
    if drop:  # skip frame numbers 0, 1 (2, 3 at 59.94) of every minute but each tenth
        skip = 2 * nominal // 30
        per_10min = nominal * 600 - skip * 9
        per_min = nominal * 60 - skip
        tens, rest = divmod(frame, per_10min)
        frame += skip * 9 * tens + (skip * ((rest - skip) // per_min) if rest > skip else 0)
    ff = frame % nominal
    total_s = frame // nominal
    sep = ";" if drop else ":"
    return f"{total_s // 3600:02d}:{total_s // 60 % 60:02d}:{total_s % 60:02d}{sep}{ff:02d}"
