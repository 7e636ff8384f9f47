"""ASR building blocks: decode clips, hallucination guards, the offline base model, the GPU fallback."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pytest

from prism.audio import models
from prism.audio.speech import (
    CLIP_MAX_S,
    SR,
    AsrConfig,
    Span,
    StreamingVad,
    Transcriber,
    VadConfig,
    clips,
    compression_ratio,
    load_asr,
    load_asr_checked,
    repeated_phrase,
)
from prism.errors import ModelUnavailable
from prism.runner import Runner
from testkit.audio_synth import espeak_available
from testkit.scoring import word_error_rate

LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog and then runs across the wide green field"] * 12)


def test_clips_of_touching_spans_never_overlap():
    """Issue 11.1: VAD cuts uninterrupted speech into touching spans (28 s max); padded clips overlapped."""
    spans = [Span(0.034, 28.016), Span(28.016, 45.342), Span(45.474, 58.622)]
    out = clips(spans, pad_s=0.2, merge_gap_s=1.5, lo=0.0, hi=58.975)
    assert all(a.end_s <= b.start_s for a, b in zip(out, out[1:])), out
    assert all(0 < c.end_s - c.start_s <= CLIP_MAX_S for c in out)
    assert sum(c.end_s - c.start_s for c in out) <= 58.975
    for span in spans:  # every span is inside one clip, apart from the padding given up
        assert any(c.start_s <= span.start_s + 0.2 and span.end_s <= c.end_s for c in out), (span, out)


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_uninterrupted_speech_of_a_minute_transcribes(tmp_path):
    """Issue 11.1 end to end: about a minute of speech without a pause used to raise
    ``AssertionError: non-negative timestamp expected`` inside faster-whisper."""
    from prism.media import decode_audio

    wav = tmp_path / "long.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "-w", str(wav), LONG_TEXT], check=True)
    pcm = decode_audio(wav, 0, SR).samples
    spans, _, _ = StreamingVad(VadConfig()).feed(pcm, last=True)
    assert any(b.start_s - a.end_s < 0.4 for a, b in zip(spans, spans[1:])), spans  # touching spans
    model, pipeline = load_asr(str(models.tiny_en().path), "cpu", "int8", 0)
    segments = list(Transcriber(pipeline, model, AsrConfig()).transcribe(pcm, 0.0, spans))
    text = " ".join(s.text for s in segments)
    # a sanity bound, far above the 0.33 measured (tiny.en on espeak-ng): this test is about timing, and no text or
    # text of another passage scores ~1.0
    assert segments[-1].end > 55 and word_error_rate(LONG_TEXT, text) <= 0.7, text


def test_repetition_and_compression_guards():
    loop = "I'm not sure if it's possible, but " * 20
    assert compression_ratio(loop) > 2.4 and repeated_phrase(loop.split()) is not None
    assert repeated_phrase("I don't know how to do it,".split() * 3)
    fine = "Good morning. The weather today is cold and windy, so take a warm coat."
    assert compression_ratio(fine) < 2.4 and repeated_phrase(fine.split()) is None
    assert (
        repeated_phrase(["no,", "no,", "no,", "I", "said", "the", "station", "near", "the", "river", "at", "seven"])
        is None
    )  # emphasis
    assert repeated_phrase(["네", "네", "네", "네", "네", "네"]) is not None
    assert repeated_phrase(["안녕하세요.", "오늘은", "날씨가", "춥고", "바람이", "많이", "불어요."]) is None


def test_base_model_is_assembled_once_and_verified(tmp_path, monkeypatch):
    ref = models.whisper_base(tmp_path)
    assert ref.name == "faster-whisper-base" and ref.version == models.BASE_SHA256[:12]
    weights = ref.path / "model.bin"
    with open(weights, "rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == models.BASE_SHA256
    assert json.loads((ref.path / "config.json").read_text())["lang_ids"]  # multilingual
    mtime = weights.stat().st_mtime_ns
    assert models.whisper_base(tmp_path).path == ref.path and weights.stat().st_mtime_ns == mtime  # not redone
    assert [p.name for p in tmp_path.iterdir()] == [ref.path.name]  # no leftovers
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(models.ENV_MODEL, raising=False)
    assert models.resolve("").path == ref.path  # the default


def test_base_model_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "BASE_SHA256", "0" * 64)
    with pytest.raises(ModelUnavailable, match="sha256"):
        models.whisper_base(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left to load later


def test_unknown_model_name_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISM_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelUnavailable, match="never downloads"):
        models.resolve("large-v3-turbo")
    (tmp_path / "faster-whisper-large-v3-turbo").mkdir()
    (tmp_path / "faster-whisper-large-v3-turbo" / "model.bin").write_bytes(b"x")
    assert models.resolve("large-v3-turbo").name == "faster-whisper-large-v3-turbo"


@pytest.fixture
def broken_cuda(monkeypatch):
    """A machine that reports a GPU whose CUDA libraries do not load (CUDA 13 host, CUDA 12 ctranslate2)."""
    import faster_whisper

    from prism.audio import speech

    real = faster_whisper.WhisperModel

    def model(path, device="auto", **kwargs):
        if device == "cuda":
            raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")
        return real(path, device=device, **kwargs)

    monkeypatch.setattr(speech, "_cuda_devices", lambda: 1)
    monkeypatch.setattr(faster_whisper, "WhisperModel", model)
    load_asr.cache_clear()
    yield
    load_asr.cache_clear()


def test_unusable_gpu_falls_back_to_cpu_with_reason(broken_cuda):
    model, pipeline, runtime = load_asr_checked(str(models.tiny_en().path), "auto", "default", 0)
    assert runtime.device == "cpu" and runtime.compute_type == "int8"
    assert "libcublas.so.12" in runtime.fallback_reason and "cuda" in runtime.fallback_reason


def test_stage_reports_gpu_fallback_in_metrics(broken_cuda, tmp_path):
    from prism.synth import ffmpeg

    video = tmp_path / "tone.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=64x36:rate=10:d=3", "-f", "lavfi", "-i",
           "sine=frequency=440:duration=3", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest",
           str(video))  # fmt: skip
    title = Runner(tmp_path / "out", params={"audio": {"model": "tiny.en"}}).run([video], ["audio"])[0]
    stage = title.stages[0]
    assert stage.status == "succeeded", stage.reason
    metrics = json.loads((title.title_dir / "manifest.json").read_text())["stages"]["audio"]["metrics"]
    assert metrics["asr_device"] == "cpu" and "libcublas.so.12 is not found" in metrics["asr_device_fallback"]


def test_language_params_are_validated():
    from prism.errors import ConfigError
    from prism.stages.audio import AudioStage

    assert AudioStage({"language": "ko"}).params.language == "ko"
    assert AudioStage({"language_hint": "kor"}).params.language_hint == "kor"
    for bad in ({"language": "korean"}, {"language": "xx"}, {"language_hint": "zz"}):
        with pytest.raises(ConfigError):
            AudioStage(bad)


def test_language_hint_from_environment_enters_the_params(monkeypatch):
    from prism.stages.audio import LANGUAGE_HINT_ENV, AudioStage

    plain = AudioStage().params_hash()
    monkeypatch.setenv(LANGUAGE_HINT_ENV, "ko")
    hinted = AudioStage()
    assert hinted.params.language_hint == "ko" and hinted.params_hash() != plain  # reruns when the hint changes


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
@pytest.mark.slow
def test_no_speech_no_text_over_music_and_silence(tmp_path):
    """Music alone and silence give no transcript even when the decoder is handed them."""
    from testkit.audio_synth import music

    model, pipeline = load_asr(str(models.whisper_base().path), "cpu", "int8", 0)
    bed = music(12.0)[::3][: 12 * SR] * np.float32(0.3)  # 48 kHz -> 16 kHz (a tonal bed; aliasing is fine)
    audio = np.concatenate([np.zeros(4 * SR, np.float32), bed])
    transcriber = Transcriber(pipeline, model, AsrConfig(language="ko"))
    fake = [Span(1.0, 3.5), Span(5.0, 9.0), Span(10.0, 15.0)]  # spans a VAD might wrongly give
    assert list(transcriber.transcribe(audio, 0.0, fake)) == []


class _FakeWord:
    def __init__(self, start, end, word):
        self.start, self.end, self.word, self.probability = start, end, word, 0.9


class _FakeSegment:
    def __init__(self, start, end, words):
        self.start, self.end = start, end
        self.words = [_FakeWord(s, e, w) for s, e, w in words]
        self.text = "".join(w for _, _, w in words)
        self.avg_logprob, self.no_speech_prob = -0.3, 0.01


class _FakeDecoder:
    """Stands in for faster-whisper: returns the given segments whatever the audio (the guards are under test)."""

    def __init__(self, segments):
        self.segments = segments
        self.model = type("M", (), {"is_multilingual": True})()

    def transcribe(self, audio, **kwargs):
        return iter(self.segments), None


def test_character_loops_are_trimmed_or_dropped():
    """Issue 20.4: a loop inside one word ("쇼프프프프프프프프프프프프프프") escaped the phrase guard and
    the compression ratio when the rest of the segment was real text."""
    from prism.audio.speech import char_loops, trim_char_loops

    loop = "쇼프프프프프프프프프프프프프프"
    assert char_loops(loop) == len(loop) - 2 and trim_char_loops(loop) == "쇼프"  # all but one "프" and "쇼"
    assert char_loops("그는 이리저리 피하면서 길 한 옆으로 걸어갔다.") == 0
    assert char_loops("1000000 won, ...... and zzz") == 0  # digits, punctuation and short runs are not loops
    assert trim_char_loops("hahahahahahaha no") == "ha no"

    words = [(0.0, 0.4, " 그는"), (0.4, 0.9, " 이리저리"), (0.9, 1.6, " 피하면서"), (1.6, 2.0, " 길"), (2.0, 2.2, " 한"),
             (2.2, 2.8, " 옆으로"), (2.8, 3.4, " 걸어갔다"), (3.4, 4.0, " " + loop)]  # fmt: skip
    looped_tail = _FakeSegment(0.0, 4.0, words)
    mostly_loop = _FakeSegment(4.0, 6.0, [(4.0, 4.5, " 그는"), (4.5, 5.0, " 이리저리"), (5.0, 5.5, " 피하면서"),
                                          (5.5, 6.0, " 프프프프프프프프프프")])  # fmt: skip
    decoder = _FakeDecoder([looped_tail, mostly_loop])
    tr = Transcriber(decoder, decoder, AsrConfig(language="ko"))
    kept = list(tr.transcribe(np.zeros(SR * 6, np.float32), 0.0, [Span(0.0, 6.0)]))
    assert [s.text for s in kept] == ["그는 이리저리 피하면서 길 한 옆으로 걸어갔다 쇼프"], kept
    assert kept[0].words[-1].word == " 쇼프" and len(kept[0].words) == 8
    for seg in (looped_tail, mostly_loop):  # what the guards before this one let through
        assert compression_ratio(seg.text) <= 2.4 and repeated_phrase(seg.text.split()) is None
    assert tr.rejected == {"repetition": 1} and tr.trimmed == {"char_loop": 1}
