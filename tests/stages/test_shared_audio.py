"""Cues and audio read each audio track from one shared decode, with one definition of silence.

The title has two tracks: track 0 holds a tone, 2 s of digital silence, and 1 s of a tone at
about -58 dBFS (silence for the audio stage's -50 dBFS default, not for the cues' -60 dBFS
QC threshold); track 1 a plain tone. With audio first, or with the runner's plan saying audio
follows cues, ffmpeg decodes each track once; each stage's output is the same as when it runs alone.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from prism.media import audio_blocks
from prism.runner import Runner
from prism.synth import ffmpeg
from prism.timeline import frame_level_db, runs

TRACK0 = "if(between(t,1.5,3.5),0,if(between(t,4.5,5.5),0.0017,0.5)*sin(2*PI*440*t))"


@pytest.fixture(scope="module")
def two_tracks(tmp_path_factory):
    video = tmp_path_factory.mktemp("shared") / "two_tracks.mkv"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=96x54:rate=25:duration=6",
        "-f", "lavfi", "-i", f"aevalsrc='{TRACK0}':s=48000:d=6",
        "-f", "lavfi", "-i", "sine=frequency=880:sample_rate=44100:duration=6",
        "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-c:a", "flac", str(video),
    )  # fmt: skip
    return video


def _spy_audio_decodes(monkeypatch) -> list[int]:
    """The audio track of every ffmpeg process started from now on (``0:a:N`` in its command)."""
    decoded: list[int] = []
    real = subprocess.Popen

    def popen(cmd, *args, **kwargs):
        if match := re.search(r"0:a:(\d+)", " ".join(map(str, cmd))):
            decoded.append(int(match[1]))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    return decoded


def _tables(tdir):
    return {
        name: pq.read_table(tdir / name).to_pylist()
        for name in ("cues.parquet", "audio_segments.parquet", "loudness_short_term.parquet")
        if (tdir / name).exists()
    }


@pytest.fixture(scope="module")
def alone(two_tracks, tmp_path_factory):
    """Each stage run on its own (its own decode), as the reference."""
    root = tmp_path_factory.mktemp("alone")
    out = {}
    for stage in ("cues", "audio"):
        [title] = Runner(root / stage).run([two_tracks], [stage])
        assert title.stages[0].status == "succeeded", title.stages[0].reason
        out.update(_tables(title.title_dir))
        if stage == "audio":
            out["loudness.json"] = (title.title_dir / "loudness.json").read_text()
    return out


@pytest.mark.parametrize("order", [["audio", "cues"], ["cues", "audio"]])
def test_one_after_another_each_track_is_decoded_once_and_outputs_match_the_stages_alone(
    two_tracks, alone, order, tmp_path, monkeypatch
):
    """The runner tells SharedMedia the stages it will run, so cues keeps its decode for the audio stage."""
    decoded = _spy_audio_decodes(monkeypatch)
    [title] = Runner(tmp_path / "out", overlap=False).run([two_tracks], order)
    assert [s.status for s in title.stages] == ["succeeded", "succeeded"], [s.reason for s in title.stages]
    assert sorted(decoded) == [0, 1]  # the audio stage reads both tracks, cues track 0: one decode each
    joint = _tables(title.title_dir)
    joint["loudness.json"] = (title.title_dir / "loudness.json").read_text()
    assert joint == alone
    assert not list((tmp_path / "out").rglob("audio-*.f32"))  # the spool goes with the run's work dir


def test_side_by_side_cues_decodes_on_its_own_and_outputs_match_the_stages_alone(
    two_tracks, alone, tmp_path, monkeypatch
):
    """With cues and audio running at once, cues never waits for the audio stage's decode (that would
    hold the visual stages behind the transcription): its plain decode, and the same outputs."""
    decoded = _spy_audio_decodes(monkeypatch)
    [title] = Runner(tmp_path / "out", overlap=True).run([two_tracks], ["cues", "audio"])
    assert [s.status for s in title.stages] == ["succeeded", "succeeded"], [s.reason for s in title.stages]
    assert sorted(decoded) in ([0, 0, 1], [0, 1])  # [0, 1] when audio's spool was whole before cues asked
    joint = _tables(title.title_dir)
    joint["loudness.json"] = (title.title_dir / "loudness.json").read_text()
    assert joint == alone


def test_cues_alone_decodes_without_the_loudness_meter(two_tracks, tmp_path, monkeypatch):
    commands: list[str] = []
    real = subprocess.Popen

    def popen(cmd, *args, **kwargs):
        commands.append(" ".join(map(str, cmd)))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    [title] = Runner(tmp_path / "out").run([two_tracks], ["cues"])
    assert title.stages[0].status == "succeeded"
    audio = [c for c in commands if "0:a:" in c]
    assert len(audio) == 1 and "ebur128" not in audio[0] and "-ar 16000" in audio[0]


def test_silence_spans_match_a_direct_decode(alone, two_tracks):
    """Cues' silence = runs of 10 ms windows under -60 dBFS of the title's own 16 kHz mono decode."""
    level = np.concatenate([frame_level_db(b, 16000, 0.01) for b in audio_blocks(two_tracks, 0, 16000)])
    expected = [edge / 100 for a, b in runs(level < -60.0) if b - a >= 50 for edge in (a, b)]
    silence = [r[k] for r in alone["cues.parquet"] if r["cue_type"] == "silence" for k in ("start_s", "end_s")]
    assert silence == pytest.approx(expected)
    assert silence == pytest.approx([1.5, 3.5], abs=0.02)


def test_each_stage_keeps_its_own_threshold(alone):
    """-58 dBFS is quiet for the audio stage's segments (-50) but not dead air for the cues (-60)."""
    segments = alone["audio_segments.parquet"]
    quiet = [r[k] for r in segments if r["track"] == 0 and r["label"] == "silence" for k in ("start_s", "end_s")]
    assert quiet == pytest.approx([1.5, 3.5, 4.5, 5.5], abs=0.02)
    assert not [r for r in alone["cues.parquet"] if r["cue_type"] == "silence" and r["start_s"] > 4.0]


def test_a_replayed_stream_is_the_decoded_one(two_tracks, tmp_path, monkeypatch):
    from prism.audio.pcm import TrackStream

    def stream(block_s: float) -> TrackStream:
        return TrackStream(two_tracks, 0, channels=1, sample_rate=48000, block_s=block_s, spool=tmp_path / "a.f32")

    first = stream(1.0)
    decoded = np.concatenate(list(first.blocks()))
    decoded_calls = _spy_audio_decodes(monkeypatch)
    again = stream(0.37)  # another reader's block length: the same samples, cut differently
    blocks = list(again.blocks())
    assert decoded_calls == []
    assert {b.size for b in blocks[:-1]} == {again.block_samples}
    assert np.array_equal(np.concatenate(blocks), decoded)
    assert again.loudness == first.loudness and again.decode_errors == first.decode_errors == 0
    assert again.samples_read == first.samples_read and again.exit_reason is None


def test_two_readers_decoding_one_track_at_once_never_mix_their_spools(two_tracks, tmp_path):
    """Stages of two concurrency groups (cues beside audio) may both decode a track: interleaved
    writes to one spool would leave a garbled file for the next reader to replay."""
    from prism.audio.pcm import TrackStream

    def stream() -> TrackStream:
        return TrackStream(two_tracks, 0, channels=1, sample_rate=48000, block_s=0.5, spool=tmp_path / "a.f32")

    a, b = stream().blocks(), stream().blocks()
    got_a = [next(a) for _ in range(4)]
    got_b = [next(b)]  # b starts while a is mid-decode
    got_a += list(a)  # a finishes first: its spool is now the one to replay
    decoded = np.concatenate(got_a)
    assert np.array_equal(np.concatenate(list(stream().blocks())), decoded)
    got_b += list(b)
    assert np.array_equal(np.concatenate(got_b), decoded)
    assert np.array_equal(np.concatenate(list(stream().blocks())), decoded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.f32", "a.f32.json"]


def test_a_failed_decode_is_replayed_as_the_same_error(tmp_path, monkeypatch):
    from prism.audio.pcm import TrackStream
    from prism.errors import MediaError

    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"\x1a\x45\xdf\xa3 not really matroska")
    first = TrackStream(bad, 0, channels=2, sample_rate=48000, spool=tmp_path / "bad.f32")
    with pytest.raises(MediaError) as original:
        list(first.blocks())
    decoded_calls = _spy_audio_decodes(monkeypatch)
    second = TrackStream(bad, 0, channels=2, sample_rate=48000, spool=tmp_path / "bad.f32")
    with pytest.raises(MediaError) as replayed:
        list(second.blocks())
    assert decoded_calls == [] and str(replayed.value) == str(original.value)
