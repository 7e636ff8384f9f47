"""Production option: speaker turns from a pyannote.audio diarization pipeline loaded from the model bucket.

The default speaker turns (:mod:`prism.audio.speakers`, resemblyzer windows, weights in a wheel)
need nothing but PyPI. A stronger model (pyannote's ``speaker-diarization-community-1`` or ``-3.1``:
a segmentation model that also scores overlapped speech, plus a WeSpeaker embedding) is opt-in:

- ``audio.speaker_model`` (or ``$PRISM_SPEAKER_MODEL``) names a pipeline directory: an absolute
  path, or a name under ``$PRISM_MODEL_DIR`` (the cloud worker syncs the S3 model location there);
  the directory holds the pipeline's ``config.yaml`` and the weights it refers to, as
  ``Pipeline.from_pretrained(...).to_disk`` or a Hugging Face snapshot lays them out.
- ``pyannote.audio`` is then needed (``pip install pyannote.audio``; the GPU image installs it).
  Nothing is ever downloaded: a missing directory or package raises :class:`ModelUnavailable`.

:class:`PipelineDiarizer` has the interface of :class:`prism.audio.speakers.WindowEmbedder`: the
stage feeds it the streamed dialogue track, and it runs the pipeline once over the whole track.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np

from prism.audio.speakers import SpeakerConfig, SpeakerTurn, _join
from prism.audio.speech import SR, Span
from prism.contract import ENV_MODEL_DIR, ENV_SPEAKER_MODEL
from prism.errors import ModelUnavailable


def speaker_model_spec(spec: str = "") -> str:
    """The configured pipeline: ``spec``, else ``$PRISM_SPEAKER_MODEL``; "" means the built-in resemblyzer turns."""
    return (spec or os.environ.get(ENV_SPEAKER_MODEL, "")).strip()


def resolve_pipeline_dir(spec: str) -> Path:
    """The pipeline directory for ``spec`` (a path, or a name under ``$PRISM_MODEL_DIR``) holding ``config.yaml``."""
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() or spec.startswith((".", "~")) else []
    if not candidates and (model_dir := os.environ.get(ENV_MODEL_DIR)):
        candidates.append(Path(model_dir) / spec)
    candidates.append(path)
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate.resolve()
    raise ModelUnavailable(
        f"speaker model {spec!r}: no pyannote pipeline directory (with config.yaml) at "
        f"{', '.join(str(c) for c in candidates)}; put it under ${ENV_MODEL_DIR} (the worker syncs the S3 model "
        f"location there) or set audio.speaker_model / {ENV_SPEAKER_MODEL} to its path"
    )


@functools.lru_cache(maxsize=2)
def load_pipeline(path: str, device: str):
    """The pyannote pipeline from a local directory, once per process, on ``device``."""
    try:
        from pyannote.audio import Pipeline
    except ImportError as exc:
        raise ModelUnavailable(
            f"audio.speaker_model={path} needs pyannote.audio (pip install pyannote.audio), which is not installed"
        ) from exc
    import torch

    config = Path(path) / "config.yaml"
    pipeline = Pipeline.from_pretrained(config)
    if pipeline is None:  # pyannote returns None rather than raising for an unusable checkpoint
        raise ModelUnavailable(f"pyannote could not load the pipeline in {config}")
    return pipeline.to(torch.device(device))


def pipeline_id(path: Path) -> str:
    return f"pyannote-{path.name}"


class PipelineDiarizer:
    """Keeps the dialogue track (16 kHz mono float32, spilled to a temporary file) and diarizes it at the end.

    ``pipeline`` is anything called as pyannote's pipelines are (``pipeline({"waveform", "sample_rate"})``),
    returning an ``Annotation`` (pyannote.audio 3) or an object whose ``speaker_diarization`` is one (4).
    """

    def __init__(self, pipeline, config: SpeakerConfig):
        self.pipeline = pipeline
        self.config = config
        self.spans: list[Span] = []
        self._file = tempfile.TemporaryFile(prefix="prism-track-")
        self._samples = 0  # samples written so far: blocks handed over again (the VAD's carry) are skipped

    def add(self, audio: np.ndarray, offset_s: float, spans: list[Span]) -> None:
        self.spans += spans
        start = int(round(offset_s * SR))
        end = start + audio.size
        if end <= self._samples:
            return
        if start > self._samples:  # a gap (should not happen with a streamed track): silence
            self._file.write(np.zeros(start - self._samples, np.float32).tobytes())
            self._samples = start
        self._file.write(np.ascontiguousarray(audio[self._samples - start :], np.float32).tobytes())
        self._samples = end

    def turns(self) -> list[SpeakerTurn]:
        if not self.spans or not self._samples:
            return []
        import torch

        self._file.flush()
        track = np.memmap(self._file, dtype=np.float32, mode="r", shape=(self._samples,))
        options = {}
        if self.config.num_speakers:
            options["num_speakers"] = self.config.num_speakers
        else:
            options["max_speakers"] = self.config.max_speakers
        result = self.pipeline({"waveform": torch.from_numpy(np.array(track))[None], "sample_rate": SR}, **options)
        annotation = getattr(result, "speaker_diarization", result)
        names: dict[str, str] = {}
        pieces = []
        for segment, _, label in sorted(annotation.itertracks(yield_label=True), key=lambda t: t[0].start):
            name = names.setdefault(label, f"SPEAKER_{len(names):02d}")
            pieces.append(SpeakerTurn(name, round(float(segment.start), 3), round(float(segment.end), 3)))
        self._file.close()
        return _join(pieces, self.config.merge_gap_s)
