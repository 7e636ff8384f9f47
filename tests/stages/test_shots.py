"""Shots stage: TransNetV2 boundaries against generated ground truth."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from prism.errors import ConfigError
from prism.runner import Runner
from prism.stages.shots import ShotsParams, ShotsStage, Transition, find_transitions
from prism.synth import Shot, Title

TOLERANCE = 2  # frames


def _shots(out, title_id):
    return pq.read_table(out / "titles" / title_id / "shots.parquet").to_pandas()


def _metrics(tdir, stage="shots"):
    return json.loads((tdir / "manifest.json").read_text())["stages"][stage]["metrics"]


def test_sample_cuts_within_two_frames(sample_run):
    out, truth, outcome = sample_run
    assert outcome.status == "succeeded"
    shots = _shots(out, "sample")
    cut_starts = shots.loc[shots.transition_in == "cut", "start_frame"].tolist()[1:]  # first shot starts the title
    assert len(cut_starts) == len(truth.cuts)
    for expected, found in zip(truth.cuts, cut_starts):
        assert abs(found - expected) <= TOLERANCE, (truth.cuts, cut_starts)


def test_sample_gradual_transitions_found_and_typed(sample_run):
    out, truth, _ = sample_run
    gradual = _shots(out, "sample").query("transition_in == 'gradual'")
    assert len(gradual) == len(truth.gradual)
    for (t_start, t_end), (_, row) in zip(truth.gradual, gradual.iterrows()):
        assert t_start <= row.start_frame <= t_end  # the boundary sits inside the real transition
        overlap = min(t_end, row.transition_end_frame) - max(t_start, row.transition_start_frame)
        assert overlap >= 0.6 * (t_end - t_start)


def test_shots_tile_the_title(sample_run):
    out, truth, _ = sample_run
    shots = _shots(out, "sample")
    assert shots.start_frame.iloc[0] == 0 and shots.end_frame.iloc[-1] == truth.frame_count
    assert (shots.start_frame.iloc[1:].to_numpy() == shots.end_frame.iloc[:-1].to_numpy()).all()
    assert np.allclose(shots.start_s, shots.start_frame / truth.fps, atol=1e-3)
    assert shots.shot_index.tolist() == list(range(len(shots)))
    assert shots.score.iloc[1:].between(0.5, 1.0).all() and np.isnan(shots.score.iloc[0])


def test_per_frame_scores_written(sample_run):
    out, truth, _ = sample_run
    scores = pq.read_table(out / "titles" / "sample" / "shot_scores.parquet").to_pandas()
    assert len(scores) == truth.frame_count
    assert scores.transition_prob.iloc[truth.cuts[0] - 1] > 0.5  # TransNetV2 peaks on the last frame before a cut


@pytest.mark.parametrize(
    ("title", "expected_cuts"),
    [
        (Title([Shot("testsrc2", 2.0)], width=160, height=90), []),
        (Title([Shot("orange", 1.2), Shot("blue", 1.2), Shot("life", 1.2)], width=160, height=90), [30, 60]),
    ],
    ids=["single-shot", "three-short-shots"],
)
@pytest.mark.slow
def test_cut_table(make_video, tmp_path, title, expected_cuts):
    path, truth = make_video(f"cuts-{len(expected_cuts)}.mp4", title)
    assert truth.cuts == expected_cuts
    [outcome] = Runner(tmp_path).run([path], ["shots"])
    assert outcome.status == "succeeded"
    found = _shots(tmp_path, path.stem).start_frame.tolist()[1:]
    assert len(found) == len(expected_cuts)
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(found, expected_cuts))


def test_find_transitions_classifies_cut_and_gradual():
    single = np.zeros(200, np.float32)
    many = np.zeros(200, np.float32)
    single[49] = many[49] = 0.95  # a cut after frame 49
    many[120:140] = 0.9  # a dissolve over frames 120..139 peaking at 130
    single[130] = 0.8
    got = find_transitions(single, many, ShotsParams())
    assert got == [
        Transition(50, "cut", pytest.approx(0.95), 50, 50),
        Transition(131, "gradual", pytest.approx(0.8), 120, 140),
    ]


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"device": "tpu"}, {"batch_windows": -1}, {"nope": 1}])
def test_params_validated_at_construction(bad):
    with pytest.raises(ConfigError):
        ShotsStage(bad)


def test_model_identity_names_weights():
    model = ShotsStage().model()
    assert model.name == "transnetv2" and "weights-sha256=" in model.version


@pytest.mark.parametrize("variant", ["mkv", "webm", "ts", "ts-offset", "mp4-offset"])
def test_other_containers_and_start_offsets(container_run, variant):
    """Times count from the first decoded frame: a 1000 s start offset or MPEG-TS's 1.4 s mux delay
    never shows up in them, and the last shot ends where the last frame does."""
    tdir, _, truth, outcome = container_run(variant)
    assert outcome.status == "succeeded", outcome
    shots = pq.read_table(tdir / "shots.parquet").to_pandas()
    assert len(shots) == 3
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(shots.start_frame.iloc[1:], truth.cuts))
    assert shots.start_s.iloc[0] == 0.0
    assert np.allclose(shots.start_s, shots.start_frame / truth.fps, atol=1e-3)
    assert shots.end_s.iloc[-1] == pytest.approx(truth.frame_count / truth.fps, abs=1e-3)
    metrics = _metrics(tdir)
    assert metrics["decoded_duration_s"] == pytest.approx(truth.frame_count / truth.fps, abs=1e-3)
    assert metrics["truncated"] is False


@pytest.mark.slow
def test_lying_container_duration_does_not_stretch_the_last_shot(make_video, media_dir, tmp_path):
    from testkit.broken_media import lie_about_duration

    title = Title([Shot("orange", 1.2), Shot("blue", 1.2), Shot("life", 1.2)], width=160, height=90)
    src, truth = make_video("cuts-2.mp4", title)
    liar = media_dir / "claims-10h.mp4"
    lie_about_duration(src, liar, 36000.0)
    [outcome] = Runner(tmp_path).run([liar], ["shots"])
    assert outcome.status == "succeeded"
    shots = _shots(tmp_path, liar.stem)
    assert shots.end_frame.iloc[-1] == truth.frame_count
    assert shots.end_s.iloc[-1] == pytest.approx(truth.frame_count / truth.fps, abs=1e-3)  # not 36000
    metrics = _metrics(tmp_path / "titles" / liar.stem)
    assert metrics["container_duration_s"] == pytest.approx(36000.0)
    assert metrics["truncated"] is True  # the header claims far more than decodes: flagged for QC


def test_truncated_file_is_processed_and_flagged(make_video, media_dir, tmp_path):
    """moov first, then only 10 % of mdat: the decodable part is processed, the shortfall flagged."""
    from testkit.broken_media import truncate_mp4

    title = Title([Shot("testsrc2", 6.0), Shot("mandelbrot", 6.0)], width=160, height=90)
    src, truth = make_video("long-for-truncation.mp4", title)
    cut = media_dir / "truncated.mp4"
    truncate_mp4(src, cut, keep=0.10)
    [outcome] = Runner(tmp_path).run([cut], ["shots"])
    assert outcome.status == "succeeded", outcome
    metrics = _metrics(tmp_path / "titles" / cut.stem)
    assert metrics["truncated"] is True
    assert metrics["container_duration_s"] == pytest.approx(12.0, abs=0.1)
    assert 0.2 < metrics["decoded_duration_s"] < 4.0
    shots = _shots(tmp_path, cut.stem)
    assert shots.end_s.iloc[-1] == pytest.approx(metrics["decoded_duration_s"], abs=1e-3)
    assert shots.end_frame.iloc[-1] == metrics["frames"] < truth.frame_count
