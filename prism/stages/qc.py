"""``qc``: content QC findings and a verdict against a delivery spec (``prism/qc/profiles/*.toml``).

Reads what the title run already has, decodes nothing of its own: the visual pass (colour
bars and flashing from its 48x27 RGB frames, letterbox and pillarbox from its per-frame active
area), the ``cues`` stage's black, frozen and silent spans, and the shared decode of the audio
track (EBU R128 loudness and true peak: replayed from the audio or cues stage's spool when
either decoded it in this run). Every observation is a finding (``check``); the profile names
the rule it breaks and its severity, and the verdict is the worst one (``prism.qc.evaluate``).
``qc_findings.parquet`` keeps every finding, so ``prism qc TITLE --profile NAME`` judges a title
against another spec without analysing it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from prism.audio.pcm import ANALYSIS_RATE
from prism.errors import MediaError
from prism.media.decode import align_blocks
from prism.provenance import code_version
from prism.qc import Finding, evaluate, load_profile
from prism.qc import audio as qa
from prism.qc import visual as qv
from prism.stages.base import ModelInfo, Output, ReportLane, Stage, StageContext, StageResult, register


@dataclass(frozen=True)
class QcParams:
    profile: str = "service"  # a shipped profile (service, ebu_r128, atsc_a85) or a .toml path
    bars_min_s: float = 0.4
    audio_track: int = 0
    text_max_frames: int = 120  # keyframes the text detector reads (about 1 s each on a core); 0 = no text checks
    text_side: int = 360  # the short side the text detector sees

    def __post_init__(self) -> None:
        load_profile(self.profile)  # raises ConfigError naming the shipped profiles
        if self.bars_min_s <= 0:
            raise ValueError("bars_min_s must be > 0")
        if self.audio_track < 0:
            raise ValueError("audio_track must be >= 0")
        if self.text_max_frames < 0 or self.text_side < 32:
            raise ValueError("text_max_frames must be >= 0 and text_side >= 32")


QC_FINDINGS_SCHEMA = pa.schema(
    [
        ("check", pa.string()),  # what was seen: colour_bars, black, loudness_integrated, ...
        ("rule", pa.string()),  # the profile's rule it falls under: colour_bars_in_programme, ...
        ("severity", pa.string()),  # info | warn | fail
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("start_tc", pa.string()),  # SMPTE timecode at the title's frame rate
        ("end_tc", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("confidence", pa.float32()),
        ("evidence_frame", pa.int64()),  # index of a frame that shows it (null for audio findings)
        ("detail", pa.string()),
    ],
    metadata={"prism.artifact": "qc_findings", "prism.artifact_version": "1"},
)


def title_fps(ctx: StageContext, measured: float) -> float:
    """The rate timecodes count in: the stream's nominal rate when the decode agrees with it."""
    video = ctx.info.video
    nominal = video.nominal_fps if video is not None else 0.0
    return nominal if nominal and abs(nominal - measured) < 0.02 * nominal else measured


def report(profile: str, verdict: str, findings: list[Finding], fps: float, duration_s: float, notes: dict) -> dict:
    """qc.json: the verdict, counts per severity and per rule, and every finding."""
    counts = {s: sum(f.severity == s for f in findings) for s in ("fail", "warn", "info")}
    rules: dict[str, int] = {}
    for f in findings:
        if f.severity != "info":
            rules[f.rule] = rules.get(f.rule, 0) + 1
    prof = load_profile(profile)
    return {
        "profile": prof.name,
        "profile_description": prof.description,
        "verdict": verdict,
        "counts": counts,
        "rules": rules,
        "fps": round(fps, 6),
        "duration_s": round(duration_s, 6),
        "not_checked": notes,
        "findings": [f.row(fps) for f in findings],
    }


@register
class QcStage(Stage):
    name = "qc"
    requires = ("shots", "keyframes", "cues")
    Params = QcParams
    outputs = (
        Output("qc.json", "json", description="QC verdict against the profile, counts and every finding"),
        Output(
            "qc_findings.parquet",
            "parquet",
            QC_FINDINGS_SCHEMA,
            "one row per QC finding",
            show=("rule", "severity", "start_tc", "end_tc", "value", "unit"),
        ),
    )
    report_lane = ReportLane(output="qc_findings.parquet", label="rule", title="QC", order=25)
    display_order = 35

    def model(self) -> ModelInfo:
        from prism.vision.text import model_identity

        return ModelInfo("prism-qc", f"code-{code_version(__name__)};{code_version('prism.qc')};{model_identity()}")

    def run(self, ctx: StageContext) -> StageResult:
        p = self.params
        vp = ctx.visual()
        end_s = vp.duration_s
        findings: list[Finding] = []
        notes: dict[str, str] = {}
        findings += qv.colour_bars(vp.frames_small, vp.times, end_s, p.bars_min_s)
        findings += qv.flashing(vp.frames_small, vp.times, end_s)
        shots = ctx.read_table("shots.parquet").select(["start_frame", "end_frame"]).to_pylist()
        if vp.active_box is not None and ctx.info.video is not None:
            w, h = ctx.info.video.display_size
            black = vp.dark_ratio >= 0.98
            spans = [(r["start_frame"], r["end_frame"]) for r in shots]
            findings += qv.active_area(vp.active_box, black, spans, vp.times, end_s, w, h, (72, 128))
        else:
            notes["active_area"] = "the visual pass recorded no active area"
        findings += qv.interlacing(qv.sampled_idet(ctx.source, end_s), end_s)
        findings += self._text(ctx, shots, end_s, notes)
        for cue in ctx.read_table("cues.parquet").to_pylist():
            frame = cue["start_frame"]
            findings.append(
                Finding(
                    cue["cue_type"],
                    cue["start_s"],
                    cue["end_s"],
                    cue["value"],
                    cue["value_unit"],
                    "from cues.parquet",
                    1.0,
                    None if frame is None else (frame + cue["end_frame"]) // 2,
                )  # fmt: skip
            )
        findings += self._audio(ctx, end_s, notes)
        findings.sort(key=lambda f: (f.start_s, f.check))
        fps = title_fps(ctx, vp.fps)
        verdict = evaluate(findings, load_profile(p.profile), end_s)
        self.write_table(ctx, "qc_findings.parquet", [f.row(fps) for f in findings])
        from prism.artifacts import write_json

        doc = report(p.profile, verdict, findings, fps, end_s, notes)
        write_json(ctx.staging / "qc.json", doc)
        counts = doc["counts"]
        return StageResult(
            outputs=["qc.json", "qc_findings.parquet"],
            metrics={"verdict": verdict, "profile": p.profile, **counts, "findings": len(findings)},
            summary=f"{verdict} ({p.profile}): {counts['fail']} fail, {counts['warn']} warn, {counts['info']} info",
        )

    def _text(self, ctx: StageContext, shots: list[dict], end_s: float, notes: dict[str, str]) -> list[Finding]:
        """Slate, credits and burnt-in subtitles from the text detector on the title's keyframes."""
        from prism.qc import text as qt

        p = self.params
        if not p.text_max_frames:
            notes["text"] = "text checks turned off (text_max_frames=0)"
            return []
        vp = ctx.visual()
        head = load_profile(p.profile).head_tail(end_s)
        credits_zone = max(head, min(300.0, 0.15 * end_s))
        keyframes = ctx.read_table("keyframes.parquet").to_pylist()
        picked = qt.pick(keyframes, credits_zone, end_s - credits_zone, p.text_max_frames)
        if len(picked) < len(keyframes):
            notes["text"] = f"{len(picked)} of {len(keyframes)} keyframes read (all of the head and tail zones)"
        from prism.vision.text import load_text_detector

        detector = load_text_detector(limit_side_len=p.text_side)
        spans = [(float(vp.times[r["start_frame"]]), vp.end_time(r["end_frame"])) for r in shots]
        texts = []
        for k, kf in enumerate(picked):
            a, b = shots[kf["shot_index"]]["start_frame"], shots[kf["shot_index"]]["end_frame"]
            still = 1.0 / (1.0 + float(np.median(vp.diff_prev[a + 1 : b])) / 8.0) if b - a > 1 else 1.0
            detection = detector.detect(qt.read_keyframe(str(ctx.title_dir / kf["path"])))
            texts.append(qt.measure(detection, kf["shot_index"], kf["frame"], kf["time_s"], still))
            ctx.progress(k + 1, len(picked), "text")
        found = qt.text_findings(texts, spans, credits_zone, end_s - credits_zone)
        for f in found:  # a slate belongs to the head: judge it against the profile's own head zone
            if f.check == "slate" and f.start_s >= head:
                f.detail += " (after the head)"
        return found

    def _audio(self, ctx: StageContext, end_s: float, notes: dict[str, str]) -> list[Finding]:
        p = self.params
        tracks = ctx.info.audio_tracks
        out = [Finding("audio_tracks", 0.0, end_s, float(len(tracks)), "tracks", f"{len(tracks)} audio track(s)")]
        if not tracks:
            notes["audio"] = "no audio track"
            return out
        if p.audio_track >= len(tracks):
            notes["audio"] = f"no audio track {p.audio_track} (file has {len(tracks)})"
            return out
        for i, t in enumerate(tracks):
            out.append(
                Finding(
                    "channel_layout",
                    0.0,
                    end_s,
                    float(t.channels),
                    "channels",
                    f"track {i}: {t.channels} channel(s) {t.channel_layout or ''}".strip(),
                )  # fmt: skip
            )
        if ctx.will_run("audio"):
            ctx.wait_for("audio")  # its decode of the track, spooled with loudness, is replayed below
        prof = load_profile(p.profile)
        try:
            vp = ctx.visual()
            start = ctx.info.audio_start_s(p.audio_track, vp.origin_s if vp.source_times is not None else None)
            stream = ctx.audio_track(p.audio_track, block_s=60.0, loudness=True)
            blocks = align_blocks(stream.blocks(), start, ANALYSIS_RATE, stream.block_samples)
            out += qa.lineup_tone(blocks, ANALYSIS_RATE, track=p.audio_track)
            if stream.exit_reason:
                raise MediaError(ctx.source, f"audio track {p.audio_track} decode failed: {stream.exit_reason}")
        except MediaError as exc:
            notes["audio"] = f"not analysed: {exc}"
            return out
        stats = getattr(stream, "channel_stats", None)
        if stats is not None and stats.times:
            out += qa.channel_findings(stats, start, prof.silent_channel_db, track=p.audio_track)
        else:
            notes["channels"] = "per-channel levels not measured (an older spool of the track)"
        lo = getattr(stream, "loudness", None)
        if lo is None:
            notes["loudness"] = "not measured"
            return out
        if lo.integrated_lufs is not None:
            out.append(
                Finding(
                    "loudness_integrated",
                    0.0,
                    end_s,
                    lo.integrated_lufs,
                    "LUFS",
                    f"track {p.audio_track}, EBU R128 integrated",
                )
            )
        else:
            notes["loudness"] = "integrated loudness below the absolute gate (silent track)"
        if lo.true_peak_dbtp is not None:
            out.append(
                Finding("true_peak", 0.0, end_s, lo.true_peak_dbtp, "dBTP", f"track {p.audio_track}, 4x oversampled")
            )
        return out
