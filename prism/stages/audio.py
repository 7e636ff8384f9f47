"""``audio``: transcript with word timing and language, subtitles, speech/music/silence, loudness, speakers.

Every audio track is decoded once, streamed in blocks (bounded memory for 2 h+ titles; see
``prism.audio.pcm``): EBU R128 loudness and speech/music/silence spans for each track, and on the
dialogue track (``track``) faster-whisper ASR over the Silero VAD speech spans and resemblyzer
speaker turns. Words carry the speaker of the turn they fall in. A title without audio is
``skipped`` with that reason (a fact about the title, not a pipeline failure); a silent track or
pure music gives empty-but-valid outputs; a track ffmpeg cannot decode at all fails the stage.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from prism.artifacts import atomic_write_bytes, write_json
from prism.audio.levels import level_db
from prism.audio.pcm import Loudness, TrackStream
from prism.audio.segments import segment_spans
from prism.audio.speakers import SpeakerConfig, SpeakerTurn, WindowEmbedder, encoder_id, load_encoder
from prism.audio.speech import (
    SR,
    AsrConfig,
    Segment,
    StreamingVad,
    Transcriber,
    VadConfig,
    faster_whisper_version,
    load_asr_checked,
    resolve_model,
    vad_model_id,
)
from prism.audio.subtitles import build_cues, rules_for, snap_to_shots, to_srt, to_vtt
from prism.contract import ENV_ASR_MODEL
from prism.devices import check_device, resolve_device
from prism.errors import ConfigError, ModelUnavailable
from prism.media.decode import align_blocks
from prism.provenance import code_version
from prism.stages.base import ModelInfo, Output, ReportLane, Stage, StageContext, StageResult, register

log = logging.getLogger(__name__)

LANGUAGE_HINT_ENV = "PRISM_LANGUAGE_HINT"  # the cloud worker's per-title hint (e.g. from the discover input)


# ISO 639-2 tags as containers carry them (MKV/MP4 "language") -> Whisper's ISO 639-1 codes.
ISO639_2 = {"kor": "ko", "eng": "en", "jpn": "ja", "zho": "zh", "chi": "zh", "spa": "es", "fra": "fr", "fre": "fr",
            "deu": "de", "ger": "de", "ita": "it", "por": "pt", "rus": "ru", "tha": "th", "vie": "vi", "ind": "id",
            "hin": "hi", "ara": "ar", "tur": "tr", "msa": "ms", "may": "ms", "tgl": "tl", "fil": "tl", "nld": "nl",
            "dut": "nl", "pol": "pl", "swe": "sv", "ukr": "uk", "heb": "he", "yue": "yue"}  # fmt: skip


def language_code(value: str | None) -> str | None:
    """A Whisper language code from an ISO 639-1/-2 code or a container tag; None if unknown/undetermined."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    code = (value or "").strip().lower().replace("_", "-").split("-")[0]
    code = ISO639_2.get(code, code)
    return code if code in _LANGUAGE_CODES else None


@dataclass(frozen=True)
class AudioParams:
    model: str = ""  # "" = $PRISM_ASR_MODEL or multilingual Whisper base; tiny.en | base | large-v3 | DIR
    device: str = "auto"  # auto | cpu | cuda | cuda:N (an unusable GPU falls back to the CPU, see metrics)
    compute_type: str = "default"  # CTranslate2 type: default = int8 on CPU, float16 on GPU
    batch_size: int = 0  # clips per batched decode; 0 = auto (1 on CPU, 16 on GPU)
    beam_size: int = 5
    cpu_threads: int = 0  # 0 = CTranslate2's default
    language: str = "auto"  # auto (detect) | ISO 639-1 code to force, e.g. ko
    # The title's expected language (catalogue metadata; in the cloud via PRISM_PARAMS or the job's
    # PRISM_LANGUAGE_HINT); "" = the dialogue track's language tag, if any. Used unless detection disagrees clearly.
    language_hint: str = field(default_factory=lambda: os.environ.get(LANGUAGE_HINT_ENV, ""))
    track: int = 0  # the dialogue track: transcript, subtitles and speakers come from it
    vad_threshold: float = 0.5
    min_silence_s: float = 0.3  # pause that ends a speech span
    silence_db: float = -50.0  # 10 ms RMS under this (dBFS, mono mix) is silence
    min_span_s: float = 0.3  # shorter silence/music runs are absorbed by their neighbour
    num_speakers: int = 0  # 0 = estimate
    max_speakers: int = 10
    subtitle_max_chars: int = 0  # per line; 0 = by language (16 Korean/Chinese, 13 Japanese, 42 others)
    subtitle_max_cps: float = 0.0  # reading speed, characters/s; 0 = by language (12 Korean, 20 Latin)
    shot_snap_frames: int = 12  # cue edges this close to a shot change (shots.parquet) move onto it
    block_s: float = 600.0  # streaming block length (memory bound)

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.batch_size < 0 or self.beam_size < 1 or self.cpu_threads < 0 or self.track < 0:
            raise ValueError("batch_size, cpu_threads, track must be >= 0 and beam_size >= 1")
        if self.language != "auto" and language_code(self.language) != self.language:
            raise ValueError(
                f"language must be auto or a Whisper language code (ISO 639-1, e.g. ko), got {self.language!r}"
            )
        if self.language_hint and language_code(self.language_hint) is None:
            raise ValueError(f"language_hint {self.language_hint!r} is not a known language code")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError("vad_threshold must be in (0, 1)")
        if self.silence_db >= 0:
            raise ValueError("silence_db must be negative (dBFS)")
        if min(self.min_silence_s, self.min_span_s) <= 0 or self.block_s < 60:
            raise ValueError("min_silence_s and min_span_s must be > 0, block_s >= 60")
        if self.num_speakers < 0 or self.max_speakers < 1:
            raise ValueError("num_speakers >= 0, max_speakers >= 1")
        if self.subtitle_max_chars < 0 or self.subtitle_max_cps < 0 or self.shot_snap_frames < 0:
            raise ValueError("subtitle_max_chars, subtitle_max_cps and shot_snap_frames must be >= 0")


SEGMENTS_SCHEMA = pa.schema(
    [
        ("track", pa.int32()),
        ("label", pa.string()),  # speech | music | silence
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("level_dbfs", pa.float64()),
    ],
    metadata={"prism.artifact": "audio_segments", "prism.artifact_version": "1"},
)
SPEAKERS_SCHEMA = pa.schema(
    [
        ("turn_index", pa.int32()),
        ("speaker", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
    ],
    metadata={"prism.artifact": "speakers", "prism.artifact_version": "1"},
)
SHORT_TERM_SCHEMA = pa.schema(
    [
        ("track", pa.int32()),
        ("time_s", pa.float64()),
        ("momentary_lufs", pa.float64()),
        ("short_term_lufs", pa.float64()),
    ],
    metadata={"prism.artifact": "loudness_short_term", "prism.artifact_version": "1"},
)


@register
class AudioStage(Stage):
    name = "audio"
    Params = AudioParams
    execution_params = frozenset({"device", "cpu_threads", "batch_size"})
    concurrency = "audio"  # its own decode and models: runs beside the visual stages
    outputs = (
        Output("transcript.json", "json", description="segments and words with timing, speaker, language"),
        Output("subtitles.vtt", "vtt", description="WebVTT subtitles of the dialogue track"),
        Output("subtitles.srt", "srt", description="the same cues in SubRip"),
        Output("audio_segments.parquet", "parquet", SEGMENTS_SCHEMA, "speech/music/silence spans per track"),
        Output("speakers.parquet", "parquet", SPEAKERS_SCHEMA, "speaker turns on the dialogue track"),
        Output("loudness.json", "json", description="EBU R128 loudness per track"),
        Output("loudness_short_term.parquet", "parquet", SHORT_TERM_SCHEMA, "the loudness meter every 100 ms"),
    )
    report_lane = ReportLane(kind="audio", order=30)
    display_order = 40

    def model(self) -> ModelInfo:
        try:
            ref = resolve_model(self.params.model)
        except ModelUnavailable:  # run() raises it with the full story; the identity stays usable
            return ModelInfo(f"faster-whisper-{self.params.model or 'default'}", "unavailable")
        return ModelInfo(
            f"{ref.name}+{vad_model_id().split(':')[0]}+{encoder_id()}",
            f"{ref.version}+fw{faster_whisper_version()}+{vad_model_id().split(':')[1]}+code-{code_version(__name__)}",
        )

    def check_config(self) -> None:
        try:
            resolve_model(self.params.model)
        except ModelUnavailable as exc:
            env = os.environ.get(ENV_ASR_MODEL, "").strip()
            setting = (
                f"audio.model={self.params.model!r}" if self.params.model
                else f"{ENV_ASR_MODEL}={env!r}" if env
                else "audio.model (default: multilingual Whisper base)"
            )  # fmt: skip
            raise ConfigError(f"{setting}: {exc}") from exc

    def run(self, ctx: StageContext) -> StageResult:
        p = self.params
        tracks = ctx.info.audio_tracks
        if not tracks:
            return StageResult(
                outputs=[], status="skipped", reason=f"{ctx.source}: no audio track", metrics={"audio_tracks": 0}
            )
        if p.track >= len(tracks):
            raise ConfigError(f"audio.track={p.track} but {ctx.source} has {len(tracks)} audio track(s)")

        ref = resolve_model(p.model)
        whisper, pipeline, runtime = load_asr_checked(str(ref.path), p.device, p.compute_type, p.cpu_threads)
        on_gpu = runtime.device.startswith("cuda")
        batch = p.batch_size or (16 if on_gpu else 1)
        hint = language_code(p.language_hint) or language_code(tracks[p.track].language)
        forced = None if p.language == "auto" else p.language
        try:
            transcriber = Transcriber(
                pipeline, whisper,
                AsrConfig(language=forced, language_hint=hint, beam_size=p.beam_size, batch_size=batch),
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"audio.model={ref.name}: {exc}") from exc
        embedder = WindowEmbedder(
            load_encoder(resolve_device("auto" if on_gpu else "cpu", self.name)),
            SpeakerConfig(num_speakers=p.num_speakers, max_speakers=p.max_speakers),
        )
        vad_config = VadConfig(threshold=p.vad_threshold, min_silence_s=p.min_silence_s)
        total_s = ctx.info.duration_s * len(tracks) or None

        segments: list[Segment] = []
        segment_rows: list[dict] = []
        loudness: list[Loudness] = []
        decode_errors: dict[int, int] = {}
        speech_s: dict[int, float] = {}
        done_s = 0.0
        measured_s = 0.0
        for track in tracks:
            dialogue = track.index == p.track
            # kept for the cues stage unless the runner says it does not run
            stream = ctx.audio_track(track.index, block_s=p.block_s, keep=ctx.will_run("cues") is not False)
            assert isinstance(stream, TrackStream)  # loudness is asked for (the default)
            vad = StreamingVad(vad_config)
            levels: list[np.ndarray] = []
            spans = []
            start = ctx.info.audio_start_s(track.index)  # title clock: t=0 at the first video frame
            blocks = align_blocks(stream.blocks(), start, SR, stream.block_samples)
            block = next(blocks, None)
            while block is not None:
                following = next(blocks, None)
                levels.append(level_db(block, SR))
                found, audio, offset = vad.feed(block, last=following is None)
                spans += found
                if dialogue and found:
                    segments += transcriber.transcribe(audio, offset / SR, found)
                    embedder.add(audio, offset / SR, found)
                done_s += block.size / SR
                ctx.progress(int(done_s), int(total_s) if total_s else None, f"track {track.index}")
                block = following
            level = np.concatenate(levels) if levels else np.zeros(0, np.float32)
            meter = stream.loudness  # its times: from the track's first sample, moved onto the title clock
            meter.times = [round(t - meter.times[0] + 0.1 + start, 3) for t in meter.times]
            if dialogue:
                measured_s = level.size * 0.01  # decoded, not the container's claim
            for row in segment_spans(level, spans, silence_db=p.silence_db, min_span_s=p.min_span_s):
                segment_rows.append({"track": track.index, **row})
            loudness.append(stream.loudness)
            decode_errors[track.index] = stream.decode_errors
            speech_s[track.index] = round(sum(s.end_s - s.start_s for s in spans), 3)
            if stream.decode_errors:
                log.warning(
                    "%s: audio track %d decoded with %d error(s)", ctx.source, track.index, stream.decode_errors
                )

        turns = embedder.turns()
        _label_words(segments, turns)
        duration_s = measured_s
        # what the title's speech is; an English-only model decodes everything as English but detects nothing
        language = transcriber.reported_language if segments else None
        rules = rules_for(
            transcriber.language if segments else None, max_chars=p.subtitle_max_chars, max_cps=p.subtitle_max_cps
        )
        cues = build_cues(segments, rules)
        shot_changes, fps = self._shot_changes(ctx)
        snapped = snap_to_shots(cues, shot_changes, fps, p.shot_snap_frames, rules) if shot_changes else 0
        self._write(ctx, ref, transcriber, duration_s, segments, turns, segment_rows, loudness, cues)
        words = sum(len(s.words) for s in segments)
        speakers = len({t.speaker for t in turns})
        dialogue_loudness = loudness[p.track]
        metrics = {
            "audio_tracks": len(tracks),
            "dialogue_track": p.track,
            "language": language,
            "language_source": transcriber.language_source if segments else None,
            "language_hint": hint,
            "language_detected": transcriber.detected,
            "segments": len(segments),
            "rejected_segments": dict(sorted(transcriber.rejected.items())),
            "words": words,
            "speakers": speakers,
            "turns": len(turns),
            "speech_s": speech_s,
            "integrated_lufs": dialogue_loudness.integrated_lufs,
            "decode_errors": decode_errors,
            "asr_device": runtime.device,
            "asr_compute_type": runtime.compute_type,
            "asr_batch_size": batch,
            "asr_device_fallback": runtime.fallback_reason,
            "subtitle_cues": len(cues),
            "subtitle_max_chars": rules.max_chars,
            "subtitle_max_cps": rules.max_cps,
            "subtitle_reading_speed_over": sum(1 for c in cues if c.cps > rules.max_cps + 1e-6),
            "subtitle_cues_snapped": snapped,
            "subtitle_shot_changes": len(shot_changes),
        }
        summary = f"{words} words, {speakers} speaker(s), {len(tracks)} track(s), " + (
            f"{dialogue_loudness.integrated_lufs:.1f} LUFS"
            if dialogue_loudness.integrated_lufs is not None
            else "silent"
        )
        return StageResult(outputs=[o.path for o in self.outputs], metrics=metrics, summary=summary)

    def _shot_changes(self, ctx: StageContext) -> tuple[list[float], float]:
        """Shot change times from the title's shots.parquet, when the shots stage has run (else none).

        When this run also runs ``shots`` (in the other thread), wait for it here, after the
        transcription, so the subtitles never depend on which stage happened to finish first.
        """
        ctx.wait_for("shots")
        path = ctx.title_dir / "shots.parquet"
        video = ctx.info.video
        fps = video.fps if video and video.fps else 25.0
        if not path.exists():
            return [], fps
        import pyarrow.parquet as pq

        try:
            starts = pq.read_table(path, columns=["start_s"]).column("start_s").to_pylist()
        except (OSError, KeyError, pa.ArrowException) as exc:
            log.warning("%s: shots.parquet unreadable, subtitles not snapped to shots: %s", ctx.source, exc)
            return [], fps
        return sorted(float(t) for t in starts if t and t > 0), fps

    def _write(self, ctx, ref, transcriber, duration_s, segments, turns, segment_rows, loudness, cues) -> None:
        out = ctx.staging
        english_only = not transcriber.multilingual
        transcript = {
            "language": transcriber.reported_language if segments else None,
            "language_probability": transcriber.language_probability if segments else None,
            # forced | detected | hint | "english-only model (language not detected)"
            "language_source": transcriber.language_source if segments or english_only else None,
            "language_detected": None if english_only else transcriber.detected,
            "model": {"name": ref.name, "version": ref.version, "multilingual": not english_only},
            "duration_s": round(duration_s, 3),
            "segments": [
                {
                    "id": i,
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "speaker": s.speaker,
                    "avg_logprob": s.avg_logprob,
                    "no_speech_prob": s.no_speech_prob,
                    "words": [asdict(w) for w in s.words],
                }
                for i, s in enumerate(segments)
            ],
        }
        write_json(out / "transcript.json", transcript)
        atomic_write_bytes(out / "subtitles.vtt", to_vtt(cues).encode("utf-8"))
        atomic_write_bytes(out / "subtitles.srt", to_srt(cues).encode("utf-8"))
        self.write_table(ctx, "audio_segments.parquet", segment_rows)
        speaker_rows = [
            {
                "turn_index": i,
                "speaker": t.speaker,
                "start_s": round(t.start_s, 3),
                "end_s": round(t.end_s, 3),
                "duration_s": round(t.end_s - t.start_s, 3),
            }
            for i, t in enumerate(turns)
        ]
        self.write_table(ctx, "speakers.parquet", speaker_rows)
        write_json(
            out / "loudness.json",
            {"standard": "EBU R128", "target_lufs": -23.0, "tracks": [l.to_dict() for l in loudness]},
        )
        short = {
            "track": pa.array([l.track for l in loudness for _ in l.times], pa.int32()),
            "time_s": pa.array([t for l in loudness for t in l.times], pa.float64()),
            "momentary_lufs": pa.array([m for l in loudness for m in l.momentary], pa.float64()),
            "short_term_lufs": pa.array([s for l in loudness for s in l.short_term], pa.float64()),
        }
        self.write_table(ctx, "loudness_short_term.parquet", short)


def _label_words(segments: list[Segment], turns: list[SpeakerTurn]) -> None:
    """Each word takes the speaker of the turn holding its midpoint (or the nearest turn within 1 s)."""
    if not turns:
        return
    starts = np.array([t.start_s for t in turns])
    ends = np.array([t.end_s for t in turns])
    for seg in segments:
        weight: Counter[str] = Counter()
        for w in seg.words:
            mid = (w.start + w.end) / 2
            distance = np.maximum(starts - mid, 0) + np.maximum(mid - ends, 0)
            best = int(np.argmin(distance))
            w.speaker = turns[best].speaker if distance[best] <= 1.0 else None
            if w.speaker:
                weight[w.speaker] += max(w.end - w.start, 0.01)  # type: ignore[assignment]  # float seconds
        seg.speaker = weight.most_common(1)[0][0] if weight else None
