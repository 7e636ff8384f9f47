"""Shots on real pictures: a long dissolve and a fast montage cut from scikit-image's photographs.

TransNetV2 alone keeps ``single`` under 0.5 over a 45-frame dissolve between two moving shots and
merges cuts two frames apart; the verified-cut and gradual-span paths find both.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from prism.runner import Runner
from prism.stages.shots import FrameEvidence, ShotsParams, find_transitions
from testkit.photo_clips import PhotoShot, build_photo_title, render

TOLERANCE = 2  # frames

# A pan over a cat dissolving over 45 frames into a pan over coffee, then a montage of 3-, 6-, 2-
# and 8-frame shots, then a pan over a photographer.
DISSOLVE_AND_MONTAGE = [
    PhotoShot("chelsea", 60, pan=(0.2, 0.0)),
    PhotoShot("coffee", 35, "dissolve", 45, pan=(-0.15, 0.05)),
    PhotoShot("rocket", 3, pan=(0.1, 0.0)),
    PhotoShot("astronaut", 6, pan=(0.1, 0.0)),
    PhotoShot("hubble_deep_field", 2),
    PhotoShot("motorcycle_left", 8),
    PhotoShot("camera", 30, pan=(0.15, 0.0)),
]


@pytest.fixture(scope="module")
def dissolve_and_montage(tmp_path_factory):
    out = tmp_path_factory.mktemp("photo-shots")
    path = out / "dissolve-montage.mp4"
    truth = build_photo_title(DISSOLVE_AND_MONTAGE, path, width=160, height=90)
    [outcome] = Runner(out / "prism").run([path], ["shots"])
    assert outcome.status == "succeeded", outcome.reason
    return truth, outcome.title_dir, path


def test_photo_title_truth():
    _, truth = render(DISSOLVE_AND_MONTAGE, 160, 90)
    assert truth.gradual == [(15, 60)]  # the cat's last 45 frames blend into the coffee
    assert truth.cuts == [95, 98, 104, 106, 114]  # shots of 3, 6, 2 and 8 frames
    assert truth.frame_count == 144


@pytest.mark.slow
def test_long_dissolve_and_fast_montage_on_real_photographs(dissolve_and_montage):
    truth, tdir, _ = dissolve_and_montage
    shots = pq.read_table(tdir / "shots.parquet").to_pandas()
    starts = shots.start_frame.tolist()[1:]
    assert len(starts) == len(truth.gradual) + len(truth.cuts), starts  # nothing missed, nothing extra
    [(g_start, g_end)] = truth.gradual
    dissolve = shots.iloc[1]
    assert g_start <= dissolve.start_frame < g_end and dissolve.transition_in == "gradual"
    overlap = min(g_end, dissolve.transition_end_frame) - max(g_start, dissolve.transition_start_frame)
    assert overlap >= 0.5 * (g_end - g_start)  # its extent covers the dissolve
    montage = shots.iloc[2:]
    assert montage.transition_in.tolist() == ["cut"] * len(truth.cuts)
    assert all(abs(found - cut) <= TOLERANCE for found, cut in zip(montage.start_frame, truth.cuts))
    assert montage.duration_s.min() < 3 / 25 + 1e-6  # the 2-frame shot is kept


@pytest.mark.slow
def test_montage_jumps_clear_the_thresholds_by_far(dissolve_and_montage, tmp_path):
    """The picture measures the verified-cut path reads, at each true cut, against its thresholds."""
    truth, tdir, path = dissolve_and_montage
    scores = pq.read_table(tdir / "shot_scores.parquet").to_pandas()
    either = np.maximum(scores.transition_prob, scores.transition_extent_prob).to_numpy()
    from prism.media import decode_visual, probe

    vp = decode_visual(path, probe(path), tmp_path)
    evidence = FrameEvidence.measure(vp.frames_small, vp.thumbs, vp.luma_std)
    p = ShotsParams()
    for cut in truth.cuts:
        assert evidence.hist_change[cut] >= 2 * p.cut_change
        assert evidence.corr_change[cut] >= 2 * 0.3
        assert either[cut - 2 : cut + 1].max() >= 4 * p.weak_threshold
    g_start, g_end = truth.gradual[0]
    assert scores.transition_extent_prob.iloc[g_start:g_end].max() >= 1.5 * p.gradual_threshold
    assert scores.transition_prob.iloc[g_start:g_end].max() < 0.5  # why the peaks path alone misses it


def _evidence(n: int, jumps: list[int]) -> FrameEvidence:
    """Picture measures with a jump (histogram 0.9, correlation lost) into each frame of ``jumps``."""
    hist_change = np.full(n, 0.05, np.float32)
    corr_change = np.full(n, 0.02, np.float32)
    hist_change[jumps], corr_change[jumps] = 0.9, 1.0
    frames = np.zeros((n, 27, 48, 3), np.uint8)
    return FrameEvidence(frames, np.zeros((n, 9, 16), np.uint8), np.full(n, 40.0, np.float32), hist_change, corr_change)


def test_peaks_two_frames_apart_stay_two_cuts():
    """A 2-frame shot: two peaks of ``single`` with ``many`` above the extent threshold between them."""
    single = np.zeros(100, np.float32)
    many = np.zeros(100, np.float32)
    single[[49, 51]] = 0.9
    many[48:53] = [0.3, 0.9, 0.4, 0.9, 0.3]
    got = find_transitions(single, many, ShotsParams(), _evidence(100, [50, 52]))
    assert [(t.boundary, t.kind) for t in got] == [(50, "cut"), (52, "cut")]


def test_weak_peak_with_a_picture_jump_is_a_cut():
    single = np.zeros(100, np.float32)
    many = np.zeros(100, np.float32)
    single[29], many[29] = 0.3, 0.2  # unsure model
    single[69], many[69] = 0.3, 0.2  # unsure model, no jump in the picture: no cut
    got = find_transitions(single, many, ShotsParams(), _evidence(100, [30]))
    assert [(t.boundary, t.kind) for t in got] == [(30, "cut")]


def test_fade_halves_are_one_transition():
    """A fade out and in through black: two peaks inside one long many-hot span, no picture jump."""
    single = np.zeros(120, np.float32)
    many = np.zeros(120, np.float32)
    many[40:80] = 0.8
    single[[48, 70]] = [0.6, 0.7]
    got = find_transitions(single, many, ShotsParams(), _evidence(120, []))
    assert [(t.boundary, t.kind, t.start, t.end) for t in got] == [(71, "gradual", 40, 80)]
