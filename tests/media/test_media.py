"""Media layer: probe facts, the single decode pass, ffmpeg discovery and its fallbacks."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from prism.errors import MediaError
from prism.media import decode_audio, decode_visual, probe, tools
from prism.synth import Shot, Title, ffmpeg

probe_module = importlib.import_module("prism.media.probe")  # the package re-exports a function of that name


@pytest.fixture(scope="module")
def small_clip(make_video):
    return make_video("probe.mp4", Title([Shot("testsrc2", 2.0), Shot("mandelbrot", 2.0)], width=160, height=90))


@pytest.fixture(scope="module")
def rotated_clip(small_clip, media_dir):
    src, _ = small_clip
    out = media_dir / "rotated.mp4"
    ffmpeg("-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))
    return out


@pytest.fixture(scope="module")
def vfr_clip(media_dir):
    """30 fps for 1 s, then 10 fps for 2 s, in one stream."""
    out = media_dir / "vfr.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=30:duration=3",
        "-vf", "select='lt(n,30)+gte(n,30)*not(mod(n,3))',setpts='if(lt(N,30),N/30,1+(N-30)/10)/TB'",
        "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out),
    )  # fmt: skip
    return out


def test_probe_reports_stream_facts(small_clip):
    path, truth = small_clip
    info = probe(path)
    assert info.video is not None
    assert (info.video.width, info.video.height) == (160, 90)
    assert info.video.fps == pytest.approx(25.0)
    assert not info.video.variable_frame_rate
    assert info.duration_s == pytest.approx(truth.frame_count / truth.fps, abs=0.1)
    assert len(info.audio_tracks) == 1 and info.audio_tracks[0].sample_rate == 48000


def test_probe_reads_rotation_and_display_size(rotated_clip):
    info = probe(rotated_clip)
    assert info.video.rotation in (90, 270)
    assert info.video.display_size == (90, 160)


def test_probe_without_ffprobe_parses_ffmpeg(small_clip, rotated_clip, monkeypatch):
    monkeypatch.setattr(probe_module, "ffprobe_exe", lambda: None)
    info = probe(small_clip[0])
    assert (info.video.width, info.video.height, info.video.fps) == (160, 90, 25.0)
    assert info.duration_s == pytest.approx(4.0, abs=0.1)
    assert len(info.audio_tracks) == 1
    assert probe(rotated_clip).video.rotation in (90, 270)


@pytest.mark.parametrize(
    ("content", "cause"),
    [(None, "file not found"), (b"", "file is empty"), (b"hello, I am text\n" * 50, "not a media file")],
)
def test_probe_bad_files_name_file_and_cause(tmp_path, content, cause):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError) as err:
        probe(path)
    assert str(path) in str(err.value) and cause in str(err.value)


def test_decode_visual_one_pass_gives_frames_times_and_measures(small_clip, tmp_path):
    path, truth = small_clip
    vp = decode_visual(path, probe(path), tmp_path)
    assert vp.frame_count == truth.frame_count
    assert vp.frames_small.shape == (truth.frame_count, 27, 48, 3) and vp.frames_small.dtype == np.uint8
    assert np.allclose(vp.times, np.arange(truth.frame_count) / truth.fps, atol=1e-3)
    for name in ("luma_mean", "dark_ratio", "sharpness", "diff_prev"):
        assert getattr(vp, name).shape == (truth.frame_count,)
    assert vp.thumbs.shape == (truth.frame_count, 9, 16)
    # the hard cut at frame 50 is the largest frame-to-frame change
    assert int(np.argmax(vp.diff_prev)) == truth.cuts[0]


def test_decode_visual_keeps_variable_frame_timestamps(vfr_clip, tmp_path):
    info = probe(vfr_clip)
    vp = decode_visual(vfr_clip, info, tmp_path)
    assert vp.frame_count == 30 + 20
    assert vp.variable_frame_rate
    assert vp.times[29] == pytest.approx(29 / 30, abs=2e-3)
    assert vp.times[31] == pytest.approx(1.1, abs=2e-3)


def test_decode_visual_applies_rotation(rotated_clip, tmp_path):
    vp = decode_visual(rotated_clip, probe(rotated_clip), tmp_path)
    assert vp.frame_count == 100  # decoded through the rotation filter without error


def test_decode_visual_rejects_audio_only(media_dir, tmp_path):
    path = media_dir / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(path))
    with pytest.raises(MediaError, match="no video stream"):
        decode_visual(path, probe(path), tmp_path)


def test_decode_audio_mono_pcm(small_clip):
    pcm = decode_audio(small_clip[0], track=0, sample_rate=16000)
    assert pcm.samples.dtype == np.float32
    assert pcm.duration_s == pytest.approx(4.0, abs=0.1)
    assert 0.04 < np.abs(pcm.samples).max() < 0.1  # lavfi sine is 1/8 full scale, halved by the synth


def test_ffmpeg_falls_back_to_imageio_binary(monkeypatch):
    import imageio_ffmpeg

    tools.ffmpeg_exe.cache_clear()
    monkeypatch.delenv("PRISM_FFMPEG", raising=False)
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    try:
        assert tools.ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe()
    finally:
        tools.ffmpeg_exe.cache_clear()


def test_hardware_decode_is_opt_in(monkeypatch, tmp_path):
    decode = importlib.import_module("prism.media.decode")
    monkeypatch.delenv("PRISM_HWACCEL", raising=False)
    assert "-hwaccel" not in decode._visual_pass_command(tmp_path / "x.mp4")
    monkeypatch.setenv("PRISM_HWACCEL", "cuda")
    cmd = decode._visual_pass_command(tmp_path / "x.mp4")
    assert cmd[cmd.index("-hwaccel") + 1] == "cuda" and cmd.index("-hwaccel") < cmd.index("-i")


def test_audio_streams_in_bounded_blocks(small_clip):
    from prism.media import audio_blocks

    blocks = list(audio_blocks(small_clip[0], track=0, sample_rate=16000, block_s=1.0))
    assert len(blocks) >= 4 and max(b.size for b in blocks) == 16000
    assert all(b.size % 160 == 0 for b in blocks[:-1])  # whole 10 ms windows
    assert np.array_equal(np.concatenate(blocks), decode_audio(small_clip[0], track=0, sample_rate=16000).samples)


def test_title_generator_works_with_the_imageio_ffmpeg_build(monkeypatch, tmp_path):
    """imageio-ffmpeg ships its own (newer) ffmpeg: the generator's dissolves and frozen tails must
    build there too (xfade refused streams whose rate setpts had made unknown) with the frames the
    ground truth says."""
    import imageio_ffmpeg

    from prism.synth import build_title

    title = Title(
        [Shot("testsrc2", 1.2), Shot("life", 1.6, "dissolve", 0.4, freeze_tail_s=0.8), Shot("orange", 1.0)],
        width=96, height=54,
    )  # fmt: skip
    out = tmp_path / "imageio-built.mp4"
    monkeypatch.setenv("PRISM_FFMPEG", imageio_ffmpeg.get_ffmpeg_exe())
    tools.ffmpeg_exe.cache_clear()
    try:
        truth = build_title(title, out)
    finally:
        monkeypatch.delenv("PRISM_FFMPEG")
        tools.ffmpeg_exe.cache_clear()
    vp = decode_visual(out, probe(out), tmp_path / "work")
    assert vp.frame_count == truth.frame_count == 30 + 40 - 10 + 20 + 25
    assert truth.gradual == [(20, 30)] and truth.cuts == [80]
    np.testing.assert_allclose(np.diff(vp.times), 1 / 25, atol=1e-3)
    (frozen_start, frozen_end) = truth.frozen[0]
    assert vp.diff_prev[frozen_start + 1 : frozen_end].max() < 0.5  # the held frame repeats
    assert int(np.argmax(vp.diff_prev)) == truth.cuts[0]


@pytest.fixture(scope="module")
def offset_ts_clip(make_video, media_dir):
    """Not a clip the pass was tuned on: MPEG-TS, 30 fps, 400x224, timestamps starting near 10 s."""
    src, truth = make_video(
        "equivalence-src.mp4",
        Title([Shot("life", 1.0), Shot("colorchart", 1.0, "dissolve", 0.4), Shot("blue", 1.0)], width=400, height=224, fps=30.0),
    )  # fmt: skip
    out = media_dir / "equivalence.ts"
    ffmpeg("-i", str(src), "-c:v", "libx264", "-g", "15", "-an", "-output_ts_offset", "10", str(out))
    return out, truth


def _raw_frames(path, vf: str, width: int, height: int) -> np.ndarray:
    import subprocess

    cmd = [
        tools.ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        str(path),
        "-an",
        "-vf",
        vf,
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    data = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(data, np.uint8).reshape(-1, height, width, 3)


def _reference_measures(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The documented measures, frame by frame in float64: no chunks, no threads, no shortcuts."""
    out: dict[str, list] = {
        k: []
        for k in ("luma_mean", "luma_std", "dark_ratio", "clip_low", "clip_high", "sharpness", "diff_prev", "thumbs")
    }
    previous = None
    for frame in rgb.astype(np.float64):
        luma = frame[..., 0] * 0.299 + frame[..., 1] * 0.587 + frame[..., 2] * 0.114
        lap = 4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
        out["luma_mean"].append(luma.mean())
        out["luma_std"].append(luma.std())
        out["dark_ratio"].append((luma < 0.10 * 255).mean())
        out["clip_low"].append((luma < 5).mean())
        out["clip_high"].append((luma > 250).mean())
        out["sharpness"].append(lap.var())
        out["diff_prev"].append(0.0 if previous is None else np.abs(luma - previous).mean())
        out["thumbs"].append(np.rint(luma.reshape(9, 8, 16, 8).mean(axis=(1, 3))))
        previous = luma
    return {k: np.asarray(v) for k, v in out.items()}


def test_visual_pass_matches_an_independent_exact_decode(offset_ts_clip, tmp_path):
    """Measures, times and the 48x27 frames equal a plain decode of the same sizes, computed frame by
    frame (the chunked, threaded, vectorised pass changes no output beyond float32 rounding)."""
    import json
    import subprocess

    path, truth = offset_ts_clip
    vp = decode_visual(path, probe(path), tmp_path)
    analysis = _raw_frames(path, "scale=128:72:flags=area,format=rgb24", 128, 72)
    assert vp.frame_count == analysis.shape[0] == truth.frame_count
    want = _reference_measures(analysis)
    for name in ("luma_mean", "luma_std", "sharpness", "diff_prev"):
        np.testing.assert_allclose(getattr(vp, name), want[name], rtol=1e-4, atol=1e-3, err_msg=name)
    for name in ("dark_ratio", "clip_low", "clip_high"):  # float32 luma may land on the other side of a threshold
        np.testing.assert_allclose(getattr(vp, name), want[name], atol=5 / (128 * 72), err_msg=name)
    assert np.abs(vp.thumbs.astype(int) - want["thumbs"]).max() <= 1

    probed = subprocess.run(
        [tools.ffprobe_exe(), "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "json", str(path)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    times = np.array([float(f["pts_time"]) for f in json.loads(probed.stdout)["frames"]])
    assert 10.0 <= times[0] < 12.0  # a real start offset (whether times keep it is not this test's business)
    np.testing.assert_allclose(vp.times - vp.times[0], times - times[0], atol=2e-5)  # 90 kHz ticks

    derived = _raw_frames(path, "scale=128:72:flags=area,format=rgb24,scale=48:27,format=rgb24", 48, 27)
    np.testing.assert_array_equal(vp.frames_small, derived)  # one scale from the source, then 48x27 from it
    direct = _raw_frames(path, "scale=48:27,format=rgb24", 48, 27)  # what the pass used to feed TransNetV2
    assert np.abs(vp.frames_small.astype(float) - direct).mean() < 6.0


def test_visual_filter_graph_scales_the_source_once():
    decode = importlib.import_module("prism.media.decode")
    graph = decode.visual_filter_graph()
    assert graph.startswith("[0:v]scale=128:72:flags=area,format=rgb24,showinfo,")  # times read off the small frame
    assert graph.count("scale=") == 2 and "[from_analysis]scale=48:27" in graph  # 48x27 comes from 128x72
    assert "scale_cuda" not in graph and "hwdownload" not in graph


def test_cuda_visual_pass_halves_on_the_gpu_and_downloads_a_small_frame(monkeypatch, tmp_path):
    from prism.media.probe import MediaInfo, VideoStream

    decode = importlib.import_module("prism.media.decode")
    assert decode.cuda_halvings(1920, 1080) == [(960, 540), (480, 270)]
    assert decode.cuda_halvings(3840, 2160) == [(1920, 1080), (960, 540), (480, 270)]
    assert decode.cuda_halvings(1280, 720) == [(640, 360), (320, 180)]
    assert decode.cuda_halvings(1440, 1080) == [(720, 540), (360, 270)]
    assert decode.cuda_halvings(400, 224) == []  # already small: nothing to halve
    assert all(w % 2 == 0 and h % 2 == 0 for w, h in decode.cuda_halvings(1918, 1078))

    graph = decode.visual_filter_graph([(960, 540), (480, 270)])
    assert graph.startswith(
        "[0:v]scale_cuda=960:540:interp_algo=bilinear,scale_cuda=480:270:interp_algo=bilinear:format=nv12,"
        "hwdownload,format=nv12,scale=128:72:flags=area,format=rgb24,showinfo,"
    )
    assert graph.endswith(decode.visual_filter_graph().split("showinfo,", 1)[1])  # the same CPU tail

    def info(width: int, height: int, rotation: int = 0) -> MediaInfo:
        video = VideoStream("h264", width, height, rotation, 25.0, 25.0, False, 250)
        return MediaInfo("x.mp4", 1, "mov,mp4", 10.0, None, video)

    monkeypatch.setenv("PRISM_HWACCEL", "cuda")
    cmd = decode._visual_pass_command(tmp_path / "x.mp4", info(1920, 1080))
    assert cmd[cmd.index("-hwaccel") + 1] == "cuda" and cmd[cmd.index("-hwaccel_output_format") + 1] == "cuda"
    assert cmd.index("-hwaccel_output_format") < cmd.index("-i") and "scale_cuda=480:270" in " ".join(cmd)
    rotated = decode._visual_pass_command(tmp_path / "x.mp4", info(1920, 1080, rotation=90))
    assert "-hwaccel_output_format" not in rotated and "scale_cuda" not in " ".join(
        rotated
    )  # autorotate runs on the CPU
    assert "-hwaccel_output_format" not in decode._visual_pass_command(tmp_path / "x.mp4", info(320, 180))
    monkeypatch.setenv("PRISM_HWACCEL", "vaapi")  # other accelerators: decode only, as before
    other = decode._visual_pass_command(tmp_path / "x.mp4", info(1920, 1080))
    assert other[other.index("-hwaccel") + 1] == "vaapi" and "-hwaccel_output_format" not in other


def test_cuda_visual_pass_without_a_usable_gpu_falls_back_to_the_cpu(make_video, tmp_path, monkeypatch, caplog):
    path, truth = make_video(
        "hd-fallback.mp4", Title([Shot("testsrc2", 1.0), Shot("orange", 1.0)], width=640, height=360, audio=False)
    )
    monkeypatch.delenv("PRISM_HWACCEL", raising=False)
    cpu = decode_visual(path, probe(path), tmp_path / "cpu")
    monkeypatch.setenv("PRISM_HWACCEL", "cuda")
    gpu = decode_visual(path, probe(path), tmp_path / "gpu")
    assert gpu.frame_count == cpu.frame_count == truth.frame_count
    np.testing.assert_allclose(gpu.times, cpu.times)
    fell_back = any("decoding on the CPU" in r.getMessage() for r in caplog.records)
    if fell_back:  # no CUDA here (CI): the retry is the CPU pass itself
        np.testing.assert_array_equal(gpu.frames_small, cpu.frames_small)
        np.testing.assert_array_equal(gpu.luma_mean, cpu.luma_mean)
    else:  # a real GPU: halved there, so close but not bit-equal
        np.testing.assert_allclose(gpu.luma_mean, cpu.luma_mean, atol=3.0)
    assert int(np.argmax(gpu.diff_prev)) == truth.cuts[0]


def test_visual_pass_stops_ffmpeg_when_the_consumer_fails(small_clip, tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(importlib.import_module("prism.media.decode"), "CHUNK_FRAMES", 4)  # 25 chunks: the queue fills

    def fail(done: int, total: int | None) -> None:
        time.sleep(1.0)  # ffmpeg meanwhile fills the pipe and the reader's queue
        raise RuntimeError("consumer gave up")

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="consumer gave up"):
        decode_visual(small_clip[0], probe(small_clip[0]), tmp_path, progress=fail)
    assert threading.active_count() == before  # no reader thread left blocked on a full queue


@pytest.mark.parametrize(
    ("variant", "origin"), [("mp4-offset", 1000.0), ("ts-offset", 1001.4), ("ts", 1.4), ("mkv", 0.0)]
)
def test_decode_times_start_at_the_first_frame(container_video, tmp_path, variant, origin):
    """The title clock starts at the first decoded frame; the source timestamp it maps to is kept."""
    path, truth = container_video(variant)
    info = probe(path)
    vp = decode_visual(path, info, tmp_path)
    assert vp.frame_count == truth.frame_count
    assert vp.times[0] == 0.0
    assert np.allclose(vp.times, np.arange(truth.frame_count) / truth.fps, atol=1e-6)
    assert vp.duration_s == pytest.approx(truth.frame_count / truth.fps, abs=1e-6)
    assert vp.origin_s == pytest.approx(origin, abs=0.1)
    assert np.allclose(vp.source_times - vp.origin_s, vp.times, atol=1e-6)
    assert info.video.start_s == pytest.approx(vp.origin_s, abs=1e-3)
    declared = 0.0 if variant.startswith("ts") else truth.frame_count / truth.fps  # a TS declares nothing
    assert info.declared_video_duration_s() == pytest.approx(declared, abs=0.05)


def test_probe_keeps_what_the_container_declares(container_video):
    path, _ = container_video("mp4-offset")
    info = probe(path)
    assert info.duration_s > 1000  # MP4 counts the 1000 s offset into its duration
    assert info.start_s == pytest.approx(1000.0, abs=0.05)
    assert info.audio_tracks[0].start_s == pytest.approx(1000.0, abs=0.05)
    assert -0.05 < info.audio_start_s(0) <= 0.0  # AAC priming: the audio starts a little before the picture


def test_title_clock_closes_timestamp_discontinuities():
    from prism.media.decode import title_clock

    source = np.concatenate([1.4 + np.arange(50) * 0.04, 1.4 + np.arange(50) * 0.04])  # spliced: restarts
    times = title_clock(source, mpegts=True)
    assert np.allclose(times, np.arange(100) * 0.04)
    jump = np.concatenate([np.arange(50) * 0.04, 600 + np.arange(50) * 0.04])  # a 10 min hole in a TS
    assert title_clock(jump, mpegts=True)[-1] == pytest.approx(99 * 0.04)
    assert title_clock(jump, mpegts=False)[-1] == pytest.approx(600 + 49 * 0.04)  # VFR gap elsewhere is real


def test_duration_check_flags_decoded_far_below_declared():
    from prism.media.decode import DurationCheck

    assert DurationCheck(decoded_s=2.2, declared_s=22.4, container_s=22.4).truncated
    assert not DurationCheck(decoded_s=4.0, declared_s=4.02, container_s=4.02).truncated  # TS audio runs longer
    assert not DurationCheck(decoded_s=0.5, declared_s=1.2, container_s=1.2).truncated  # under a second: noise
    metrics = DurationCheck(decoded_s=4.0, declared_s=36000.0, container_s=36000.0).metrics()
    assert metrics["truncated"] and "36000.0 s" in metrics["truncation"]


@pytest.mark.parametrize("start_s", [1.5, -0.25, 0.0])
def test_audio_blocks_shift_onto_the_title_clock(small_clip, start_s):
    from prism.media import audio_blocks

    plain = decode_audio(small_clip[0], track=0, sample_rate=16000).samples
    blocks = list(audio_blocks(small_clip[0], track=0, sample_rate=16000, block_s=1.0, start_s=start_s))
    assert all(b.size == 16000 for b in blocks[:-1])
    shifted = np.concatenate(blocks)
    lead = round(start_s * 16000)
    if lead >= 0:
        assert not shifted[:lead].any() and np.array_equal(shifted[lead:], plain)
    else:
        assert np.array_equal(shifted, plain[-lead:])
