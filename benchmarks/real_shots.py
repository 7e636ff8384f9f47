"""Shot detection on real pictures: Prism before and after issue 20, raw TransNetV2, PySceneDetect.

Two kinds of material, both with exact or hand-checked truth:

- Titles cut from real photographs (scikit-image's shipped images, ``testkit/photo_clips.py``):
  long dissolves (20-60 frames), fades through black, fast montages (2-10-frame shots) and hard
  cuts between moving shots with fast pans and zooms in between. The detector's constants were
  tuned on the ``tune`` photographs (seed 1); the ``held-out`` photographs (seed 2) are reported.
- Real film clips from PySceneDetect's ``resources`` branch (GoldenEye excerpts, VFR and rotated;
  its ``testvideo.mp4`` with two fades through black and a 30-frame dissolve), cut lists checked
  by eye on contact sheets. They are copyrighted and not committed: set
  ``PRISM_PYSCENEDETECT_RESOURCES`` to a folder holding ``goldeneye-vfr-drop3.mp4``,
  ``issue-134-rotate.mp4`` and ``testvideo.mp4`` (``git checkout`` of that branch's
  ``tests/resources``); without it that part is skipped. A black hold of a second or more is a
  shot of its own (so a fade out, black, fade in is two transitions), as in PySceneDetect's own
  fade list for ``testvideo.mp4``.

Every method sees the same decoded frames: Prism before and after run on one visual pass and one
TransNetV2 pass per file (the stage's own functions), raw TransNetV2 is the reference
post-processing (a scene ends where ``single`` first exceeds 0.5), PySceneDetect runs with its
defaults. Scoring is ``benchmarks.shots.score`` (one-to-one, ±2 frames, a gradual transition
matched anywhere in its span).

    python -m benchmarks.real_shots            # prints the markdown section
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.shots import Score, scenedetect_boundaries, score
from prism.synth import Truth

# Hand-checked cut lists (frames as decoded: the first frame of each new shot; gradual [start, end)).
REAL_CLIPS: dict[str, Truth] = {
    "goldeneye-vfr-drop3.mp4": Truth(cuts=[60, 140], gradual=[], black=[], frozen=[], frame_count=160, fps=23.976),
    "issue-134-rotate.mp4": Truth(cuts=[90, 210], gradual=[], black=[], frozen=[], frame_count=240, fps=23.976),
    # black leader cut at 30, cut to black at 180; fades in 211-240, out 331-360, in 394-423, out 664-693
    # (luma ramps; PySceneDetect's own fade analysis of this clip lists the same ins and outs);
    # a dissolve over 528-558 (the blend weight of the two shots' frames)
    "testvideo.mp4": Truth(
        cuts=[30, 180],
        gradual=[(211, 240), (331, 360), (394, 423), (528, 558), (664, 693)],
        black=[],
        frozen=[],
        frame_count=720,
        fps=29.97,
    ),  # fmt: skip
}
METHODS = ("prism_after", "prism_before", "transnetv2_0.5", "pyscenedetect_adaptive", "pyscenedetect_content")


def _before(single: np.ndarray, many: np.ndarray) -> list[int]:
    """Prism's post-processing before issue 20 (commit c010567): one peak per run above 0.5, its
    extent swallowing whatever follows."""
    n, thr, ext = single.shape[0], 0.5, 0.2
    either = np.maximum(single, many)
    out: list[int] = []
    i = 0
    while i < n:
        if single[i] <= thr:
            i += 1
            continue
        j = i
        while j + 1 < n and single[j + 1] > thr:
            j += 1
        peak = i + int(np.argmax(single[i : j + 1]))
        hi = j
        while hi + 1 < n and either[hi + 1] > ext:
            hi += 1
        if 0 < peak + 1 < n and (not out or peak + 1 > out[-1]):
            out.append(peak + 1)
        i = hi + 1
    return out


def _raw_transnetv2(single: np.ndarray, threshold: float = 0.5) -> list[int]:
    above = single > threshold
    return [i for i in range(1, len(above)) if above[i] and not above[i - 1]]


def detect_all(path: Path, work: Path) -> dict[str, list[int]]:
    from prism.media import decode_visual, probe
    from prism.stages.shots import FrameEvidence, ShotsParams, find_transitions, predict

    vp = decode_visual(path, probe(path), work / path.stem, chunks=1)
    single, many = predict(vp.frames_small, "cpu", 1)
    evidence = FrameEvidence.measure(vp.frames_small, vp.thumbs, vp.luma_std)
    found = {
        "prism_after": [t.boundary for t in find_transitions(single, many, ShotsParams(), evidence)],
        "prism_before": _before(single, many),
        "transnetv2_0.5": _raw_transnetv2(single),
    }
    for method in ("adaptive", "content"):
        found[f"pyscenedetect_{method}"] = scenedetect_boundaries(path, method)[0]
    return found


def material(work: Path) -> dict[str, list[tuple[str, Path, Truth]]]:
    from testkit.photo_clips import HELD_OUT_PHOTOS, TUNE_PHOTOS, build_photo_title, evaluation_titles

    sets: dict[str, list[tuple[str, Path, Truth]]] = {}
    for tag, photos, seed in (("photos, held out", HELD_OUT_PHOTOS, 2), ("photos, tune", TUNE_PHOTOS, 1)):
        sets[tag] = []
        for name, shots in evaluation_titles(photos, seed).items():
            path = work / f"{tag.split(',')[1].strip().replace(' ', '_')}_{name}.mp4"
            sets[tag].append((name, path, build_photo_title(shots, path, seed=seed)))
    folder = os.environ.get("PRISM_PYSCENEDETECT_RESOURCES")
    if folder:
        sets["real film clips"] = [(name, Path(folder) / name, truth) for name, truth in REAL_CLIPS.items()]
    return sets


def measure(only: str | None = None) -> dict:
    """Scores per material set (``only``: the one set whose name starts with it)."""
    t0 = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="prism-real-shots-") as tmp:
        work = Path(tmp)
        for tag, items in material(work).items():
            if only and not tag.startswith(only):
                continue
            totals = {m: Score() for m in METHODS}
            per_file = {}
            for name, path, truth in items:
                found = detect_all(path, work)
                per_file[name] = {m: score(truth, found[m]).as_dict() for m in METHODS}
                for m in METHODS:
                    totals[m].add(score(truth, found[m]))
            results[tag] = {"overall": {m: totals[m].as_dict() for m in METHODS}, "per_file": per_file}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def section(results: dict | None = None) -> str:
    results = results or measure()
    lines = [
        "### Shots on real pictures (issue 20 item 2)",
        "",
        "`python -m benchmarks.real_shots` (set `PRISM_PYSCENEDETECT_RESOURCES` for the film clips; see the",
        "module docstring). ±2 frames, one-to-one; a gradual transition matches anywhere in its span.",
        "Prism before = the post-processing of commit c010567 on the same TransNetV2 output.",
        "",
    ]
    for tag, res in results.items():
        if tag == "seconds":
            continue
        lines += [f"**{tag}**", "", "| method | precision | recall | F1 | recall (cuts) | recall (gradual) | FP | misses |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for m in METHODS:
            r = res["overall"][m]
            lines.append(
                f"| {m} | {r['precision']} | {r['recall']} | {r['f1']} | {r['recall_cut']} | "
                f"{r['recall_gradual']} | {r['false_positives']} | {r['misses']} |"
            )
        lines += ["", "| file | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
        for name, per in res["per_file"].items():
            lines.append(
                f"| {name} | " + " | ".join(f"{per[m]['f1']} / {per[m]['false_positives']}" for m in METHODS) + " |"
            )
        lines += ["", "(per file: F1 / false positives)", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(section(measure(sys.argv[1] if len(sys.argv) > 1 else None)))
