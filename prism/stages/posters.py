"""``posters``: the frames an artwork team would pick, ranked, with face-aware crops for each artwork shape.

Candidates are the title's keyframes: full-resolution JPEGs the keyframes stage already wrote by an exact
seek, so this stage decodes no video. Each candidate is

1. **excluded** when it falls in a black or frozen cue, near a gradual transition (fades, dissolves),
   in a QC finding that rules it out (colour bars, slate, credits, flashing; read from ``qc`` outputs
   when that stage has run for the title), in the last ``exclude_last_percent`` of the title (spoilers),
   or when its own picture is colour bars / a flat card, too dark (a fade's end) or carries text;
2. **scored**: faces (libfacedetection, :mod:`prism.vision.faces`: count, largest face's share of the
   frame) times picture quality (:mod:`prism.vision.quality`: sharpness, exposure, noise,
   motion blur, BRISQUE). Text detection (:mod:`prism.vision.text`) and BRISQUE, the costly checks,
   run on the ``shortlist`` best candidates by the cheap scores only;
3. **chosen** greedily by score, skipping near-duplicates (perceptual hash, ``imagehash``), frames closer
   than ``min_gap_s`` to a chosen one, and a face that looks like one already chosen while others remain.

Each chosen frame gets crop boxes for 2:3, 16:9 and 1:1 that keep its faces inside with head room.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from prism.errors import MediaError
from prism.provenance import code_version
from prism.stages.base import ModelInfo, Output, Stage, StageContext, StageResult, register
from prism.vision.faces import FaceDetection
from prism.vision.text import TextDetection

ASPECTS = {"2x3": 2 / 3, "16x9": 16 / 9, "1x1": 1.0}
ANALYSIS_SIDE = 640  # long side candidates are analysed at (JPEG draft decode, then resize)
HEAD_ROOM = 0.6  # of a face's height kept above it inside a crop
CHIN_ROOM = 0.35  # ... and below it
QC_FILES = ("qc_findings.parquet", "qc.json")


@dataclass(frozen=True)
class PostersParams:
    top_k: int = 8
    shortlist: int = 48  # candidates (best by the cheap scores) that get text detection and BRISQUE
    min_face_score: float = 0.6
    max_text_coverage: float = 0.001  # share of the frame covered by text boxes above which a frame is excluded
    min_exposure: float = 0.2  # exposure score (0..1) under which a frame is too dark or blown out (fades, flashes)
    fade_margin_s: float = 0.5  # kept away from gradual transitions (fades, dissolves) by this much
    exclude_last_percent: float = 0.0  # spoiler guard: nothing from the last N % of the title
    duplicate_max_distance: int = (
        10  # perceptual-hash Hamming distance (of 64 bits) at or under which two frames are duplicates
    )
    min_gap_s: float = -1.0  # least time between two chosen frames; < 0: duration / (3 * top_k)
    # QC finding rules containing any of these words exclude their span
    qc_exclude: str = "bars,slate,credit,flash,logo,text,subtitles"
    text_min_aspect: float = 2.0  # text boxes count when at least this many times wider than tall (lines, not texture)

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.shortlist < self.top_k:
            raise ValueError("top_k must be >= 1 and shortlist >= top_k")
        if not 0.0 < self.min_face_score < 1.0:
            raise ValueError("min_face_score must be in (0, 1)")
        if not 0.0 <= self.max_text_coverage < 1.0 or not 0.0 <= self.min_exposure < 1.0:
            raise ValueError("max_text_coverage and min_exposure must be in [0, 1)")
        if self.fade_margin_s < 0 or not 0.0 <= self.exclude_last_percent < 100.0:
            raise ValueError("fade_margin_s must be >= 0 and exclude_last_percent in [0, 100)")
        if not 0 <= self.duplicate_max_distance <= 64:
            raise ValueError("duplicate_max_distance must be in 0..64")


@dataclass
class Candidate:
    frame: int
    shot_index: int
    time_s: float
    path: str  # the keyframe JPEG, relative to the title directory
    width: int = 0
    height: int = 0
    excluded: str = ""  # why it cannot be a poster ("" = eligible)
    faces: FaceDetection | None = None
    face_score: float = 0.0
    quality: Any = None  # FrameQuality
    quality_score: float = 0.0
    text_coverage: float = float("nan")
    bars: bool = False
    phash: Any = None
    face_hash: Any = None
    score: float = 0.0
    note: str = ""  # how the selection treated it

    @property
    def prescore(self) -> float:
        return self.face_score * self.quality_score


def face_score(det: FaceDetection) -> float:
    """0.2 without a face, up to 1 for one to three faces, the largest 3-30 % of the frame."""
    if not det.faces:
        return 0.2
    share = det.largest_share
    close = min(1.0, share / 0.03) * (1.0 if share <= 0.3 else max(0.5, 1.0 - (share - 0.3)))
    crowd = 1.0 if len(det.faces) <= 3 else 0.85
    return float(0.35 + 0.65 * close * crowd)


def looks_like_bars(rgb: np.ndarray) -> bool:
    """Colour bars or a flat card: saturated columns that do not change down the frame's upper half
    (SMPTE, EBU and full-field bars alike), or no picture at all."""
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).resize((64, 36), Image.Resampling.BILINEAR), dtype=np.float32)
    y = small @ np.array([0.299, 0.587, 0.114], np.float32)
    if float(y.std()) < 4.0:
        return True  # a flat card
    top = small[:16]
    down = float(top.std(axis=0).mean())  # change down each column
    across = float(top.mean(axis=0).std(axis=0).mean())  # change from column to column
    sat = float((top.max(axis=2) - top.min(axis=2)).mean())
    return down < 6.0 and across > 25.0 and sat > 60.0


def text_lines(det: TextDetection, width: int, height: int, min_aspect: float) -> TextDetection:
    """The detector's boxes shaped like lines of text (wide, and under a quarter of the frame tall).

    PP-OCR's detector also fires on compact texture (an eye, a flag, a camera's dials) in boxes about as
    tall as wide; burnt-in subtitles, slates, credits and captions are lines many times wider than tall.
    """
    keep = tuple(
        b for b in det.boxes if (b.x1 - b.x0) * width >= min_aspect * (b.y1 - b.y0) * height and b.y1 - b.y0 <= 0.25
    )
    return TextDetection(keep)


def crop_box(det: FaceDetection | None, width: int, height: int, aspect: float) -> tuple[float, float, float, float]:
    """The largest ``aspect`` (w/h) crop of a ``width`` x ``height`` frame holding its faces with head room.

    Faces are taken largest first while they still fit together; the crop is centred on them
    horizontally and puts them in its upper part (a third of the spare height above, two below).
    Without faces it is centred. Returns (x0, y0, x1, y1) in fractions of the frame.
    """
    if width / height > aspect:
        ch, cw = float(height), height * aspect
    else:
        cw, ch = float(width), width / aspect
    faces = list(det.faces) if det else []
    region: tuple[float, float, float, float] | None = None
    for f in faces:
        fh, fw = (f.y1 - f.y0) * height, (f.x1 - f.x0) * width
        box = (
            max(0.0, f.x0 * width - 0.15 * fw),
            max(0.0, f.y0 * height - HEAD_ROOM * fh),
            min(float(width), f.x1 * width + 0.15 * fw),
            min(float(height), f.y1 * height + CHIN_ROOM * fh),
        )
        grown = box if region is None else (min(region[0], box[0]), min(region[1], box[1]), max(region[2], box[2]), max(region[3], box[3]))  # fmt: skip
        if region is not None and (grown[2] - grown[0] > cw or grown[3] - grown[1] > ch):
            continue
        region = grown
    if region is None:
        x0, y0 = (width - cw) / 2, (height - ch) / 2
    else:
        rx0, ry0, rx1, ry1 = region
        x0 = (rx0 + rx1) / 2 - cw / 2
        y0 = ry0 - max(0.0, ch - (ry1 - ry0)) / 3
        if rx1 - rx0 <= cw:  # keep the region inside when it fits (it may not: one face wider than the crop)
            x0 = min(max(x0, rx1 - cw), rx0)
        if ry1 - ry0 <= ch:
            y0 = min(max(y0, ry1 - ch), ry0)
    x0 = min(max(0.0, x0), width - cw)
    y0 = min(max(0.0, y0), height - ch)
    return (x0 / width, y0 / height, (x0 + cw) / width, (y0 + ch) / height)


def qc_spans(title_dir: Path, words: tuple[str, ...]) -> list[tuple[float, float, str]]:
    """(start_s, end_s, rule) of the QC findings whose rule names one of ``words``; [] without QC output.

    Read loosely: the QC stage lands separately, so any finding with a rule (or type/kind) and a
    start and end in seconds counts, from qc_findings.parquet or else qc.json's ``findings``.
    """
    rows: list[dict[str, Any]] = []
    parquet, js = title_dir / QC_FILES[0], title_dir / QC_FILES[1]
    try:
        if parquet.is_file():
            import pyarrow.parquet as pq

            rows = pq.read_table(parquet).to_pylist()
        elif js.is_file():
            rows = list(json.loads(js.read_text(encoding="utf-8")).get("findings") or [])
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise MediaError(parquet if parquet.is_file() else js, f"unreadable QC findings: {exc}") from exc
    out = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        rule = str(row.get("rule") or row.get("finding_type") or row.get("type") or row.get("kind") or "").lower()
        start, end = row.get("start_s"), row.get("end_s")
        if rule and isinstance(start, (int, float)) and isinstance(end, (int, float)) and any(w in rule for w in words):
            out.append((float(start), float(end), rule))
    return out


def _load(path: Path) -> np.ndarray:
    """The JPEG at ANALYSIS_SIDE on its long side (draft decode: a 4K frame is read at 1/4 or 1/8)."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        scale = min(1.0, ANALYSIS_SIDE / max(w, h))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img.draft("RGB", size)
        return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR))


def _face_hash(rgb: np.ndarray, det: FaceDetection) -> Any:
    """A perceptual hash of the largest face: a cheap stand-in for "same person, same framing" (not identity)."""
    import imagehash
    from PIL import Image

    if not det.faces:
        return None
    f, (h, w) = det.faces[0], rgb.shape[:2]
    crop = rgb[
        int(f.y0 * h) : max(int(f.y0 * h) + 2, int(f.y1 * h)), int(f.x0 * w) : max(int(f.x0 * w) + 2, int(f.x1 * w))
    ]
    return imagehash.phash(Image.fromarray(crop))


SPREAD_PENALTY = 0.7  # a candidate's score is multiplied by this for each way it repeats a chosen frame


def select(cands: list[Candidate], p: PostersParams, gap_s: float) -> list[Candidate]:
    """Greedy by score, each step taking the best candidate after penalties: near-duplicates of a chosen
    frame (perceptual hash) are dropped; a frame within ``gap_s`` of a chosen one, or whose largest face
    looks like a chosen one's, has its score multiplied by SPREAD_PENALTY (each), so spread is preferred
    but never beats a much better frame."""
    pool = [c for c in cands if not c.excluded]
    chosen: list[Candidate] = []
    while pool and len(chosen) < p.top_k:
        notes: dict[int, list[str]] = {}
        factor: dict[int, float] = {}
        for c in pool:
            why = []
            if near := next((k for k in chosen if abs(k.time_s - c.time_s) < gap_s), None):
                why.append(f"within {gap_s:.1f} s of #{chosen.index(near) + 1}")
            if c.face_hash is not None and (
                same := next((k for k in chosen if k.face_hash is not None and c.face_hash - k.face_hash <= 8), None)
            ):
                why.append(f"face like #{chosen.index(same) + 1}'s")
            notes[id(c)], factor[id(c)] = why, SPREAD_PENALTY ** len(why)
        best = max(pool, key=lambda c: (c.score * factor[id(c)], -c.time_s))
        if why := notes[id(best)]:
            best.note = f"score x{factor[id(best)]:.2f} for spread ({', '.join(why)})"
        chosen.append(best)
        pool = [c for c in pool if c is not best]
        rest = []
        for c in pool:
            if c.phash is not None and best.phash is not None and c.phash - best.phash <= p.duplicate_max_distance:
                c.excluded = f"near-duplicate of #{len(chosen)}"
            else:
                rest.append(c)
        pool = rest
    return chosen


_CROP = pa.list_(pa.float32())
POSTER_CANDIDATES_SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("shot_index", pa.int32()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("score", pa.float32()),
        ("face_score", pa.float32()),
        ("quality", pa.float32()),
        ("face_count", pa.int32()),
        ("face_boxes", pa.list_(pa.float32())),  # x0, y0, x1, y1 per face, fractions of the frame, largest first
        ("face_confidence", pa.list_(pa.float32())),
        ("largest_face_share", pa.float32()),
        ("text_coverage", pa.float32()),
        ("sharpness", pa.float32()),
        ("exposure", pa.float32()),
        ("noise_sigma", pa.float32()),
        ("motion_blur", pa.float32()),
        ("brisque", pa.float32()),
        ("phash", pa.string()),
        ("crop_2x3", _CROP),  # x0, y0, x1, y1, fractions of the frame
        ("crop_16x9", _CROP),
        ("crop_1x1", _CROP),
        ("reason", pa.string()),
    ],
    metadata={"prism.artifact": "poster_candidates", "prism.artifact_version": "1"},
)


@register
class PostersStage(Stage):
    name = "posters"
    requires = ("keyframes", "cues")
    Params = PostersParams
    outputs = (
        Output(
            "poster_candidates.parquet",
            "parquet",
            POSTER_CANDIDATES_SCHEMA,
            "the top poster candidates, ranked, with every score, the reason for the rank and crop boxes",
            show=("rank", "time_s", "score", "face_count", "text_coverage", "reason"),
        ),
        Output("posters/*.jpg", "jpg", description="full-resolution JPEG of each poster candidate"),
    )
    display_order = 25

    def model(self) -> ModelInfo:
        from prism.vision.faces import model_identity as faces
        from prism.vision.text import model_identity as text

        return ModelInfo("prism-poster-ranker", f"{faces()};{text()};code-{code_version(__name__)}")

    def run(self, ctx: StageContext) -> StageResult:
        import imagehash
        from PIL import Image

        from prism.vision.faces import load_face_detector
        from prism.vision.quality import measure
        from prism.vision.text import load_text_detector

        p = self.params
        keyframes = ctx.read_table("keyframes.parquet").to_pylist()
        shots = ctx.read_table("shots.parquet").to_pylist()
        cues = ctx.read_table("cues.parquet").to_pylist()
        if ctx.will_run("qc"):
            ctx.wait_for("qc")
        qc = qc_spans(ctx.title_dir, tuple(w.strip() for w in p.qc_exclude.split(",") if w.strip()))
        duration = max([float(s["end_s"]) for s in shots] or [0.0])
        gap_s = p.min_gap_s if p.min_gap_s >= 0 else duration / (3 * p.top_k)
        spans = [(c["start_s"], c["end_s"], c["cue_type"]) for c in cues if c["cue_type"] in ("black", "frozen")]
        for s in shots:  # fades and dissolves: TransNetV2's gradual transitions
            if s["transition_in"] == "gradual" and s["transition_end_frame"] > s["transition_start_frame"]:
                spans.append((s["start_s"] - p.fade_margin_s, s["start_s"] + p.fade_margin_s, "fade"))
        spans += [(a, b, f"qc:{rule}") for a, b, rule in qc]
        if p.exclude_last_percent > 0:
            spans.append((duration * (1 - p.exclude_last_percent / 100), math.inf, "spoiler guard"))
        gradual = [s for s in shots if s["transition_in"] == "gradual"]

        faces = load_face_detector(p.min_face_score)
        cands = [
            Candidate(
                int(k["frame"]), int(k["shot_index"]), float(k["time_s"]), k["path"], int(k["width"]), int(k["height"])
            )
            for k in keyframes
        ]
        pixels: dict[int, np.ndarray] = {}
        for i, c in enumerate(cands):
            ctx.progress(i, len(cands), "faces")
            hit = next((why for a, b, why in spans if a <= c.time_s < b), None)
            if hit is None:
                near = next((s for s in gradual if abs(s["start_s"] - c.time_s) < p.fade_margin_s + 1e-9), None)
                hit = "fade" if near else None
            if hit:
                c.excluded = hit
                continue
            try:
                rgb = _load(ctx.title_dir / c.path)
            except OSError as exc:
                raise MediaError(ctx.title_dir / c.path, f"unreadable keyframe: {exc}") from exc
            if looks_like_bars(rgb):
                c.excluded, c.bars = "colour bars or flat card", True
                continue
            c.quality = measure(rgb, with_brisque=False)
            if c.quality.exposure < p.min_exposure:
                c.excluded = f"exposure {c.quality.exposure:.2f} < {p.min_exposure} (dark, fading or blown out)"
                continue
            c.faces = faces.detect(rgb)
            c.face_score = face_score(c.faces)
            c.quality_score = c.quality.score()
            pixels[c.frame] = rgb
        eligible = sorted((c for c in cands if not c.excluded), key=lambda c: -c.prescore)
        text = load_text_detector()
        for i, c in enumerate(eligible[: p.shortlist]):
            ctx.progress(i, min(len(eligible), p.shortlist), "text, brisque")
            rgb = pixels[c.frame]
            lines = text_lines(text.detect(rgb), rgb.shape[1], rgb.shape[0], p.text_min_aspect)
            c.text_coverage = lines.coverage()
            if c.text_coverage > p.max_text_coverage:
                c.excluded = f"text covers {c.text_coverage:.2%} of the frame"
                continue
            c.quality = measure(rgb, with_brisque=True)
            c.quality_score = c.quality.score()
            c.score = c.face_score * c.quality_score
            c.phash = imagehash.phash(Image.fromarray(rgb))
            c.face_hash = _face_hash(rgb, c.faces) if c.faces else None
        for c in eligible[p.shortlist :]:
            c.excluded = f"outside the shortlist of {p.shortlist} (cheap score {c.prescore:.3f})"
        chosen = select([c for c in eligible if not c.excluded], p, gap_s)

        (ctx.staging / "posters").mkdir()
        rows = []
        for rank, c in enumerate(chosen, start=1):
            det = c.faces or FaceDetection((), c.width, c.height)
            rel = f"posters/{rank:02d}_{c.frame:07d}.jpg"
            shutil.copyfile(ctx.title_dir / c.path, ctx.staging / rel)  # the keyframe's exact-seek JPEG
            q = c.quality
            faces_txt = (
                f"{len(det.faces)} face(s), largest {det.largest_share:.1%} of the frame" if det.faces else "no face"
            )
            reason = (
                f"#{rank}: score {c.score:.3f} = faces {c.face_score:.2f} ({faces_txt}) x quality {c.quality_score:.2f} "
                f"(sharpness {q.sharpness:.0f}, exposure {q.exposure:.2f}, noise {q.noise_sigma:.1f}, "
                f"motion blur {q.motion_blur:.2f}, BRISQUE {q.brisque:.1f}); text {c.text_coverage:.2%}"
                + (f"; {c.note}" if c.note else "")
            )
            rows.append(
                {
                    "rank": rank,
                    "frame": c.frame,
                    "time_s": c.time_s,
                    "shot_index": c.shot_index,
                    "path": rel,
                    "width": c.width,
                    "height": c.height,
                    "score": c.score,
                    "face_score": c.face_score,
                    "quality": c.quality_score,
                    "face_count": len(det.faces),
                    "face_boxes": [v for f in det.faces for v in (f.x0, f.y0, f.x1, f.y1)],
                    "face_confidence": [f.score for f in det.faces],
                    "largest_face_share": det.largest_share,
                    "text_coverage": c.text_coverage,
                    "sharpness": q.sharpness,
                    "exposure": q.exposure,
                    "noise_sigma": q.noise_sigma,
                    "motion_blur": q.motion_blur,
                    "brisque": q.brisque,
                    "phash": str(c.phash),
                    **{f"crop_{name}": list(crop_box(det, c.width, c.height, a)) for name, a in ASPECTS.items()},
                    "reason": reason,
                }
            )
        self.write_table(ctx, "poster_candidates.parquet", rows)
        excluded: dict[str, int] = {}  # by the first word of the reason (qc rules and bars by all of it)
        for c in cands:
            if c.excluded:
                key = c.excluded.split(" ")[0] if not c.excluded.startswith(("qc:", "colour")) else c.excluded
                excluded[key] = excluded.get(key, 0) + 1
        with_faces = sum(1 for r in rows if r["face_count"])
        return StageResult(
            outputs=["poster_candidates.parquet", *(r["path"] for r in rows)],
            metrics={
                "candidates": len(cands),
                "chosen": len(rows),
                "with_faces": with_faces,
                "excluded": excluded,
                "qc_findings_used": len(qc),
                "min_gap_s": round(gap_s, 3),
            },
            summary=f"{len(rows)} poster candidates of {len(cands)} keyframes ({with_faces} with faces)",
        )
