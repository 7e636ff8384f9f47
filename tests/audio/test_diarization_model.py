"""The production speaker-model option (prism/audio/diarization.py) without real weights.

The pyannote pipeline cannot run here (no weights, no hub), so these check what can fail in
production before it runs: resolving the directory, the clear error without the package, and the
adapter from the streamed track to pyannote's call and back to turns, with a stand-in pipeline.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from prism.audio.diarization import PipelineDiarizer, load_pipeline, resolve_pipeline_dir, speaker_model_spec
from prism.audio.speakers import SpeakerConfig
from prism.audio.speech import SR, Span
from prism.contract import ENV_MODEL_DIR, ENV_SPEAKER_MODEL
from prism.errors import ModelUnavailable
from prism.stages.audio import AudioParams


def test_pipeline_directory_resolves_by_path_or_name_under_the_model_dir(tmp_path, monkeypatch):
    pipe = tmp_path / "models" / "pyannote-speaker-diarization-community-1"
    pipe.mkdir(parents=True)
    with pytest.raises(ModelUnavailable, match="config.yaml"):
        resolve_pipeline_dir(str(pipe))
    (pipe / "config.yaml").write_text("pipeline: {}\n")
    assert resolve_pipeline_dir(str(pipe)) == pipe.resolve()
    monkeypatch.setenv(ENV_MODEL_DIR, str(tmp_path / "models"))
    assert resolve_pipeline_dir(pipe.name) == pipe.resolve()
    with pytest.raises(ModelUnavailable, match="PRISM_SPEAKER_MODEL"):
        resolve_pipeline_dir("not-there")
    monkeypatch.setenv(ENV_SPEAKER_MODEL, pipe.name)
    assert speaker_model_spec("") == pipe.name and AudioParams().speaker_model == pipe.name


@pytest.mark.skipif(importlib.util.find_spec("pyannote.audio") is not None, reason="pyannote.audio is installed")
def test_missing_pyannote_audio_is_a_clear_model_error(tmp_path):
    (tmp_path / "config.yaml").write_text("pipeline: {}\n")
    with pytest.raises(ModelUnavailable, match="pip install pyannote.audio"):
        load_pipeline(str(tmp_path), "cpu")


class _Segment:
    def __init__(self, start, end):
        self.start, self.end = start, end


class _Annotation:
    def __init__(self, rows):
        self.rows = rows

    def itertracks(self, yield_label=False):
        return iter((_Segment(a, b), i, label) for i, (a, b, label) in enumerate(self.rows))


class _Pipeline:
    """Records what pyannote would get; answers like pyannote.audio 4 (``.speaker_diarization``)."""

    def __init__(self):
        self.calls = []

    def __call__(self, file, **options):
        self.calls.append((file, options))
        rows = [(4.0, 6.0, "B"), (0.5, 2.0, "A"), (2.2, 3.9, "A"), (5.5, 7.0, "C")]
        return type("Out", (), {"speaker_diarization": _Annotation(rows)})()


def test_pipeline_diarizer_hands_the_whole_track_once_and_returns_turns():
    pipeline = _Pipeline()
    diarizer = PipelineDiarizer(pipeline, SpeakerConfig(max_speakers=5))
    track = np.arange(8 * SR, dtype=np.float32) / SR
    # the streaming VAD hands the last 2 s of a block over again (its carry) with the next block
    diarizer.add(track[: 5 * SR], 0.0, [Span(0.5, 3.9)])
    diarizer.add(track[3 * SR :], 3.0, [Span(4.0, 7.0)])
    turns = diarizer.turns()
    ((file, options),) = pipeline.calls
    assert file["sample_rate"] == SR and options == {"max_speakers": 5}
    assert np.array_equal(file["waveform"].numpy()[0], track)  # every sample once, in order
    assert [(t.speaker, t.start_s, t.end_s) for t in turns] == [
        ("SPEAKER_00", 0.5, 3.9), ("SPEAKER_01", 4.0, 6.0), ("SPEAKER_02", 5.5, 7.0),
    ]  # fmt: skip
