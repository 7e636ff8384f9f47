"""Shot detection quality and speed: Prism (TransNetV2) against PySceneDetect, same files, same run.

Quality is scored TRECVID-style: every true transition is matched one-to-one to at most one
detected boundary; a cut matches a boundary within ``CUT_TOLERANCE`` frames of it, a gradual
transition a boundary inside its span widened by the same tolerance. Unmatched detections are
false positives (the hard negatives — camera flashes, fast pans, fast motion — exist to make
them); unmatched transitions are misses.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from prism.media import ffmpeg_exe
from prism.runner import Runner
from prism.synth import Shot, Title, Truth, build_title

CUT_TOLERANCE = 2  # frames


def quality_set(width: int, height: int, quick: bool = False) -> dict[str, Title]:
    """Generated titles with known transitions; ``quick`` keeps one small title."""
    mixed = Title(
        [
            Shot("testsrc2", 2.0),
            Shot("pan", 3.0),
            Shot("life", 2.0, "dissolve", 1.0),
            Shot("fastmotion", 3.0, flashes_s=(1.0,)),
            Shot("orange", 2.0, "fadeblack", 1.0),
        ],
        width=width, height=height,
    )  # fmt: skip
    if quick:
        return {"mixed": mixed}
    return {
        "cuts": Title(
            [
                Shot(s, 2.5)
                for s in (
                    "testsrc2",
                    "mandelbrot",
                    "life",
                    "smptehdbars",
                    "gradients",
                    "cellauto",
                    "orange",
                    "blue",
                    "sierpinski",
                    "colorchart",
                )
            ],
            width=width,
            height=height,
        ),  # fmt: skip
        "dissolves": Title(
            [Shot("testsrc2", 3.0)]
            + [
                Shot(s, 3.0, "dissolve", d)
                for s, d in (("life", 1.0), ("gradients", 0.5), ("orange", 1.5), ("mandelbrot", 1.0), ("blue", 0.8))
            ],
            width=width,
            height=height,
        ),  # fmt: skip
        "fades": Title(
            [Shot("colorchart", 3.0)]
            + [Shot(s, 3.0, "fadeblack", 1.0) for s in ("testsrc2", "life", "smptehdbars", "blue")],
            width=width,
            height=height,
        ),  # fmt: skip
        "hard_negatives": Title(
            [
                Shot("pan", 4.0),
                Shot("fastmotion", 4.0, flashes_s=(1.0, 2.5)),
                Shot("testsrc2", 4.0, flashes_s=(0.8, 2.0, 3.2)),
                Shot("life", 4.0, flashes_s=(1.5,)),
                Shot("pan", 4.0, flashes_s=(2.0,)),
            ],
            width=width,
            height=height,
        ),  # fmt: skip
        "mixed": mixed,
    }


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tp_cut: int = 0
    n_cut: int = 0
    tp_gradual: int = 0
    n_gradual: int = 0

    def add(self, other: Score) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
        return {
            "precision": round(p, 3),
            "recall": round(r, 3),
            "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
            "recall_cut": round(self.tp_cut / self.n_cut, 3) if self.n_cut else None,
            "recall_gradual": round(self.tp_gradual / self.n_gradual, 3) if self.n_gradual else None,
            "false_positives": self.fp,
            "misses": self.fn,
        }


def score(truth: Truth, detected: list[int], tolerance: int = CUT_TOLERANCE) -> Score:
    """One-to-one matching of detected boundary frames to true transitions."""
    targets = [(c, c, "cut") for c in truth.cuts] + [(a, b, "gradual") for a, b in truth.gradual]
    free = sorted(detected)
    out = Score(n_cut=len(truth.cuts), n_gradual=len(truth.gradual))
    for start, end, kind in sorted(targets):
        window = [d for d in free if start - tolerance <= d <= end + tolerance]
        if not window:
            out.fn += 1
            continue
        centre = (start + end) / 2
        best = min(window, key=lambda d: abs(d - centre))
        free.remove(best)
        out.tp += 1
        if kind == "cut":
            out.tp_cut += 1
        else:
            out.tp_gradual += 1
    out.fp = len(free)
    return out


def warm_shots_model(device: str) -> None:
    """Load TransNetV2 and run one window, so no timed run pays the load (or CUDA's first-call setup)."""
    import numpy as np

    from prism.devices import resolve_device
    from prism.stages.shots import predict

    predict(np.zeros((1, 27, 48, 3), np.uint8), resolve_device(device, "shots"), 1)


def prism_boundaries(path: Path, work: Path, device: str) -> tuple[list[int], float]:
    """Boundaries and the shots stage's own time (its decode pass included, model already loaded)."""
    warm_shots_model(device)
    runner = Runner(work, force=True, params={"shots": {"device": device}})
    [outcome] = runner.run([path], ["shots"])
    elapsed = outcome.stages[0].duration_s
    if outcome.status != "succeeded":
        raise RuntimeError(f"prism failed on {path}: {outcome.reason}")
    shots = pq.read_table(outcome.title_dir / "shots.parquet").column("start_frame").to_pylist()
    return shots[1:], elapsed


def scenedetect_boundaries(path: Path, detector: str) -> tuple[list[int], float]:
    from scenedetect import AdaptiveDetector, ContentDetector, detect

    make = {"adaptive": AdaptiveDetector, "content": ContentDetector}[detector]
    t0 = time.perf_counter()
    scenes = detect(str(path), make())
    elapsed = time.perf_counter() - t0
    return [start.get_frames() for start, _ in scenes[1:]], elapsed


def decode_only_seconds(path: Path, width: int = 48, height: int = 27) -> float:
    """ffmpeg decoding the file and scaling to the model's size, output discarded: the floor."""
    t0 = time.perf_counter()
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-an", "-vf", f"scale={width}:{height}", "-f", "null", "-"],
        check=True,
    )
    return time.perf_counter() - t0


METHODS = ("prism", "pyscenedetect_adaptive", "pyscenedetect_content")


def detect_with(method: str, path: Path, work: Path, device: str) -> tuple[list[int], float]:
    if method == "prism":
        return prism_boundaries(path, work, device)
    return scenedetect_boundaries(path, method.rsplit("_", 1)[1])


def run_quality(out: Path, *, width: int, height: int, device: str, quick: bool) -> dict:
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    totals = {m: Score() for m in METHODS}
    per_title: dict[str, dict] = {}
    for name, title in quality_set(width, height, quick).items():
        path = inputs / f"quality_{name}_{width}x{height}.mp4"
        truth = build_title(title, path)
        per_title[name] = {"transitions": len(truth.cuts) + len(truth.gradual)}
        for method in METHODS:
            found, _ = detect_with(method, path, out / "prism-quality", device)
            s = score(truth, found)
            totals[method].add(s)
            per_title[name][method] = s.as_dict()
    return {
        "tolerance_frames": CUT_TOLERANCE,
        "size": f"{width}x{height}",
        "overall": {m: totals[m].as_dict() for m in METHODS},
        "per_title": per_title,
    }


def run_speed(path: Path, frames: int, work: Path, device: str) -> dict:
    from benchmarks.core import cpu_seconds
    from prism.devices import resolve_device
    from prism.media import decode_visual, probe

    c0 = cpu_seconds()
    decode_s = decode_only_seconds(path)
    c1 = cpu_seconds()
    t0 = time.perf_counter()
    decode_visual(path, probe(path), work / "visual-pass")
    visual_s = time.perf_counter() - t0
    c2 = cpu_seconds()
    result = {
        "frames": frames,
        "device": resolve_device(device, "shots"),
        "decode_only_fps": round(frames / decode_s, 1),
        "visual_pass_fps": round(frames / visual_s, 1),
        "visual_pass_vs_decode_only": round(decode_s / visual_s, 2),
        "visual_pass_vs_decode_only_cpu": round((c1 - c0) / (c2 - c1), 2),  # by CPU seconds: robust to other load
    }
    for method in METHODS:
        _, elapsed = detect_with(method, path, work, device)
        result[f"{method}_fps"] = round(frames / elapsed, 1)
    return result
