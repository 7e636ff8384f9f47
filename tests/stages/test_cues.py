"""Cues stage: black, frozen and silent spans against generated ground truth."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from prism.runner import Runner
from prism.stages.cues import silence_cues
from prism.synth import Shot, Title

FRAME_TOLERANCE = 3


def _cues(out, title_id):
    return pq.read_table(out / "titles" / title_id / "cues.parquet").to_pandas()


def test_black_span(sample_run):
    out, truth, _ = sample_run
    black = _cues(out, "sample").query("cue_type == 'black'")
    assert len(black) == len(truth.black) == 1
    (start, end), row = truth.black[0], black.iloc[0]
    assert abs(row.start_frame - start) <= FRAME_TOLERANCE and abs(row.end_frame - end) <= FRAME_TOLERANCE
    assert row.value < 20 and row.value_unit == "mean_luma_0_255"


def test_frozen_span(sample_run):
    out, truth, _ = sample_run
    frozen = _cues(out, "sample").query("cue_type == 'frozen'")
    assert len(frozen) == 1
    (start, end), row = truth.frozen[0], frozen.iloc[0]
    assert abs(row.start_frame - start) <= FRAME_TOLERANCE and abs(row.end_frame - end) <= FRAME_TOLERANCE
    assert row.duration_s == pytest.approx((end - start) / truth.fps, abs=FRAME_TOLERANCE / truth.fps)


def test_silence_spans(sample_run):
    out, _, _ = sample_run
    silence = _cues(out, "sample").query("cue_type == 'silence'")
    expected = [(6.0, 8.0), (20.0, 21.5)]  # sample_title().silences
    assert len(silence) == len(expected)
    for (start, end), (_, row) in zip(expected, silence.iterrows()):
        assert row.start_s == pytest.approx(start, abs=0.06) and row.end_s == pytest.approx(end, abs=0.06)
        assert row.value < -60 and np.isnan(row.start_frame)


def test_silence_detector_on_known_signal():
    rate = 16000
    t = np.arange(rate * 3) / rate
    tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    tone[rate : 2 * rate] = 0.0
    [cue] = silence_cues(tone, rate, -60.0, 0.5)
    assert cue["start_s"] == pytest.approx(1.0, abs=0.011) and cue["end_s"] == pytest.approx(2.0, abs=0.011)


def test_video_without_audio_still_gets_visual_cues(make_video, tmp_path):
    path, truth = make_video(
        "noaudio-black.mp4",
        Title([Shot("testsrc2", 1.0), Shot("life", 1.0)], black_after={0: 1.0}, audio=False, width=160, height=90),
    )
    [outcome] = Runner(tmp_path).run([path], ["cues"])
    assert outcome.status == "succeeded"
    cues = _cues(tmp_path, path.stem)
    assert cues.cue_type.tolist() == ["black"]
    manifest_metrics = outcome.stages[0]
    assert manifest_metrics.status == "succeeded"


def test_silence_is_on_the_video_clock_when_audio_starts_late(make_video, media_dir, tmp_path):
    """Audio that starts 1 s after the first frame: its silence is placed on the title clock (t=0 at
    the first decoded frame), and the second before the audio starts is silent."""
    from prism.synth import ffmpeg

    title = Title([Shot("testsrc2", 3.0), Shot("life", 3.0)], width=160, height=90, silences=[(2.0, 3.0)])
    src, _ = make_video("late-audio-src.mp4", title)
    late = media_dir / "late-audio.mp4"
    ffmpeg("-i", str(src), "-itsoffset", "1.0", "-i", str(src), "-map", "0:v", "-map", "1:a", "-c", "copy", str(late))
    [outcome] = Runner(tmp_path).run([late], ["cues"])
    assert outcome.status == "succeeded"
    silence = _cues(tmp_path, late.stem).query("cue_type == 'silence'")
    assert len(silence) == 2, silence
    assert silence.start_s.tolist() == pytest.approx([0.0, 3.0], abs=0.03)
    assert silence.end_s.tolist() == pytest.approx([1.0, 4.0], abs=0.03)


@pytest.mark.parametrize("variant", ["ts", "ts-offset", "mp4-offset", "mkv", "webm"])
def test_cues_share_the_title_clock_in_other_containers(container_run, variant):
    """Silence at 3-4 s of CONTAINER_TITLE stays at 3-4 s whatever the container's start time and
    however far its audio runs ahead of the first frame (MPEG-TS: 21 ms of AAC priming)."""
    tdir, _, _, outcome = container_run(variant)
    assert outcome.status == "succeeded"
    silence = pq.read_table(tdir / "cues.parquet").to_pandas().query("cue_type == 'silence'")
    assert len(silence) == 1
    assert silence.start_s.iloc[0] == pytest.approx(3.0, abs=0.015)
    assert silence.end_s.iloc[0] == pytest.approx(4.0, abs=0.015)
