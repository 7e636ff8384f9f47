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
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from prism.devices import gpu_required, resolve_device
from prism.errors import HostError

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
    sha256: str | None = None  # of model.bin, when known (verified when the model was assembled)

    @property
    def version(self) -> str:
        if self.sha256:
            return self.sha256[:12]
        weights = self.path / "model.bin"
        stat = weights.stat()
        return _file_digest(str(weights), stat.st_size, stat.st_mtime_ns)[:12]


def resolve_model(spec: str) -> AsrModelRef:
    """The ASR model for ``spec``; see :mod:`prism.audio.models`. Never downloads."""
    from prism.audio.models import resolve

    return resolve(spec)


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


@dataclass(frozen=True)
class AsrRuntime:
    """Where the ASR model actually runs, and why it is not where it was asked to run."""

    device: str
    compute_type: str
    fallback_reason: str | None = None


def _cuda_devices() -> int:
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count()
    except RuntimeError:  # no driver at all
        return 0


def _probe(model) -> None:
    """One encoder pass on a second of silence: what fails when cuBLAS cannot be loaded.

    CTranslate2 loads its CUDA libraries lazily, so a model "loads" on a machine whose CUDA
    libraries do not match (``Library libcublas.so.12 is not found``) and fails on first use.
    """
    from faster_whisper.audio import pad_or_trim

    features = model.feature_extractor(np.zeros(SR, np.float32))
    model.encode(pad_or_trim(features))


def load_asr_checked(path: str, device: str, compute_type: str, cpu_threads: int):
    """``(model, pipeline, AsrRuntime)``: on the GPU if asked (or ``auto`` and one is usable), else the CPU.

    A GPU that cannot run the model (no driver, CUDA libraries missing or of the wrong major
    version) is not fatal: the model loads on the CPU and the reason travels in the runtime.
    """
    wanted = resolve_device(device, "audio", cuda_available=lambda: _cuda_devices() > 0, strict=False)
    reason = None
    if wanted.startswith("cuda"):
        ct = compute_type if compute_type != "default" else "float16"
        try:
            model, pipeline = load_asr(path, wanted, ct, cpu_threads)
            _probe(model)
            return model, pipeline, AsrRuntime(wanted, ct)
        except (RuntimeError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if gpu_required():
                raise HostError(
                    f"stage audio: {wanted} unusable on a GPU job, not falling back to the CPU: {first}"
                ) from exc
            reason = f"{wanted} unusable, ASR fell back to the CPU: {first}"
            log.warning("%s", reason)
            load_asr.cache_clear()
    ct = compute_type if compute_type not in ("default", "float16", "int8_float16", "bfloat16") else "int8"
    model, pipeline = load_asr(path, "cpu", ct, cpu_threads)
    return model, pipeline, AsrRuntime("cpu", ct, reason)


def faster_whisper_version() -> str:
    try:
        return version("faster-whisper")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# ------------------------------------------------------------------ ASR decoding


@dataclass
class AsrConfig:
    language: str | None = None  # forced ISO 639-1 code; None = detect
    language_hint: str | None = None  # what the title's metadata says; used unless detection clearly disagrees
    beam_size: int = 5
    batch_size: int = 1
    clip_merge_gap_s: float = 1.5
    clip_pad_s: float = 0.2
    max_compression_ratio: float = 2.4  # Whisper's own threshold for degenerate (looping) output
    min_speech_overlap: float = 0.5  # share of a segment's words that must lie in VAD speech
    detect_s: float = 30.0  # seconds of speech (VAD spans, concatenated) the language is detected on


HINT_MIN_PROB = 0.02  # a hint stands unless the detector gives it less than this ...
HINT_OVERRIDE_PROB = 0.5  # ... while another language gets at least this


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
    """Group consecutive spans into decode clips of at most one Whisper window.

    Clips never overlap: VAD spans of uninterrupted speech touch (a span is cut at
    ``MAX_SPAN_S``), so the padding of the next clip is clipped at the end of the previous one.
    faster-whisper assumes disjoint clips (it subtracts their summed length from the audio's).
    """
    out: list[Span] = []
    for span in spans:
        start, end = max(lo, span.start_s - pad_s), min(hi, span.end_s + pad_s)
        if out and start - out[-1].end_s <= merge_gap_s and end - out[-1].start_s <= CLIP_MAX_S:
            out[-1] = Span(out[-1].start_s, max(out[-1].end_s, end))
            continue
        if out:
            start = max(start, out[-1].end_s)
        if end - start > 0:
            out.append(Span(start, min(end, start + CLIP_MAX_S)))
    return out


def compression_ratio(text: str) -> float:
    """zlib compression ratio of the UTF-8 text, as Whisper computes it (loops compress well)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeated_phrase(tokens: list[str], max_n: int = 8) -> tuple[str, int] | None:
    """The longest-covering phrase repeated back to back, if it is a loop rather than emphasis.

    A loop: an n-gram said 3+ times in a row (4+ for a single word) covering at least 40 % of
    the segment. "no, no, no" in a long sentence is not one; "I don't know how to do it," x20 is.
    """
    norm = [re.sub(r"[^\w]", "", t.lower()) for t in tokens]
    best: tuple[int, str, int] | None = None
    for n in range(1, min(max_n, len(norm) // 3) + 1):
        i = 0
        while i + 2 * n <= len(norm):
            count = 1
            while norm[i + count * n : i + (count + 1) * n] == norm[i : i + n] and any(norm[i : i + n]):
                count += 1
            covered = count * n
            if count >= (4 if n == 1 else 3) and covered >= 0.4 * len(norm) and (best is None or covered > best[0]):
                best = (covered, " ".join(tokens[i : i + n]), count)
            i += max(1, (count - 1) * n) if count > 1 else 1
    return (best[1], best[2]) if best else None


CHAR_LOOP = re.compile(r"([^\W\d_]{1,4}?)\1{5,}")  # 1-4 letters said 6+ times back to back, no space between
CHAR_LOOP_REJECT = 0.4  # a segment whose loops are this share of its characters is dropped, not trimmed


def char_loops(text: str) -> int:
    """Characters inside character-level loops ("쇼프프프프프프프프프프프프프프": 13 of 15); 0 when there is none.

    A loop is a unit of one to four letters repeated six or more times with no space between; digits
    ("1000000") and punctuation ("......") never count. Whitespace-separated repeats are words,
    caught by :func:`repeated_phrase`.
    """
    return sum(m.end() - m.start() - len(m.group(1)) for m in CHAR_LOOP.finditer(text))


def trim_char_loops(text: str) -> str:
    """The text with every character-level loop cut back to one unit ("쇼프프프프프프" -> "쇼프")."""
    return CHAR_LOOP.sub(r"\1", text)


def _tokens(text: str) -> list[str]:
    """Words; for scripts written without spaces (CJK), characters."""
    words = text.split()
    if len(words) <= 2 and len(text) > 12:
        return [c for c in text if not c.isspace()]
    return words


def _overlap(a0: float, a1: float, spans: list[Span]) -> float:
    return sum(max(0.0, min(a1, s.end_s) - max(a0, s.start_s)) for s in spans)


class Transcriber:
    """Decodes speech clips of one title; the language is fixed once, from its first speech.

    Every decoded segment passes hallucination guards before it is kept; rejections are counted
    by reason in ``rejected`` (the stage reports them in its metrics):

    - ``not_speech``: Whisper's own rule (no-speech probability > 0.6 and mean log-prob < -1).
    - ``outside_speech``: most of the segment's words lie outside the VAD speech spans (text
      over the music or silence that padding and clip merging let into the decoder).
    - ``compression``: gzip compression ratio above ``max_compression_ratio`` (looping output).
    - ``repetition``: a phrase repeated back to back over much of the segment, or character-level
      loops ("프프프프프프...") over at least ``CHAR_LOOP_REJECT`` of its characters.

    A shorter character loop inside otherwise good text is cut back to one unit (in the segment
    text and in its words), counted in ``trimmed["char_loop"]``.
    """

    def __init__(self, pipeline, model, config: AsrConfig):
        self.pipeline = pipeline
        self.model = model
        self.config = config
        self.multilingual = bool(model.model.is_multilingual)
        self.language: str | None = config.language
        self.language_probability: float | None = None
        self.language_source: str | None = "forced" if config.language else None
        self.detected: list[tuple[str, float]] = []  # top detector guesses
        self.rejected: dict[str, int] = {}
        self.trimmed: dict[str, int] = {}
        if not self.multilingual:
            if config.language not in (None, "en"):
                raise ValueError(f"the ASR model is English-only and cannot transcribe language {config.language!r}")
            self.language = "en"
            if config.language is None:
                self.language_source = "not detected: English-only model, the text is English whatever was spoken"

    @property
    def reported_language(self) -> str | None:
        """The language of the speech as far as it is known: never a guess an English-only model cannot make."""
        return self.language if self.multilingual or self.config.language else None

    def _decide_language(self, audio: np.ndarray, offset_s: float, spans: list[Span]) -> None:
        cfg = self.config
        pieces, total = [], 0
        for span in spans:
            a, b = int((span.start_s - offset_s) * SR), int((span.end_s - offset_s) * SR)
            pieces.append(audio[max(0, a) : max(0, b)])
            total += pieces[-1].size
            if total >= cfg.detect_s * SR:
                break
        speech = np.concatenate(pieces)[: int(cfg.detect_s * SR)] if pieces else audio[:0]
        if speech.size < SR // 2:
            return  # too little speech to tell: wait for more
        _, _, probs = self.model.detect_language(audio=speech)
        table = dict(probs)
        self.detected = [(lang, round(float(p), 4)) for lang, p in probs[:5]]
        top, top_p = probs[0]
        hint = cfg.language_hint
        if hint and hint != top and (table.get(hint, 0.0) >= HINT_MIN_PROB or top_p < HINT_OVERRIDE_PROB):
            self.language, self.language_probability, self.language_source = hint, float(table.get(hint, 0.0)), "hint"
        else:
            self.language, self.language_probability, self.language_source = top, float(top_p), "detected"
        self.language_probability = round(self.language_probability, 4)

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def transcribe(self, audio: np.ndarray, offset_s: float, spans: list[Span]) -> Iterator[Segment]:
        if not spans:
            return
        cfg = self.config
        if self.language is None:
            self._decide_language(audio, offset_s, spans)
        hi = offset_s + audio.size / SR
        clip_list = clips(spans, cfg.clip_pad_s, cfg.clip_merge_gap_s, offset_s, hi)
        segments, _ = self.pipeline.transcribe(
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
        for seg in segments:
            text = seg.text.strip()
            if not text:
                continue
            if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                self._reject("not_speech")
                continue
            words = [
                Word(round(w.start + offset_s, 3), round(w.end + offset_s, 3), w.word, round(float(w.probability), 4))
                for w in seg.words or []
            ]
            spoken = sum(max(w.end - w.start, 0.02) for w in words)
            inside = sum(_overlap(w.start, max(w.end, w.start + 0.02), spans) for w in words)
            if words and inside < cfg.min_speech_overlap * spoken:
                self._reject("outside_speech")
                continue
            if compression_ratio(text) > cfg.max_compression_ratio:
                self._reject("compression")
                continue
            if repeated_phrase(_tokens(text)):
                self._reject("repetition")
                continue
            if looped := char_loops(text):
                letters = sum(1 for c in text if not c.isspace())
                if looped >= CHAR_LOOP_REJECT * letters:
                    self._reject("repetition")
                    continue
                text = trim_char_loops(text)
                for w in words:
                    w.word = trim_char_loops(w.word)
                self.trimmed["char_loop"] = self.trimmed.get("char_loop", 0) + 1
            yield Segment(
                start=round(seg.start + offset_s, 3),
                end=round(seg.end + offset_s, 3),
                text=text,
                avg_logprob=round(float(seg.avg_logprob), 4),
                no_speech_prob=round(float(seg.no_speech_prob), 4),
                words=words,
            )
