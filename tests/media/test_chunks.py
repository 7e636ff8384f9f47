"""Chunked visual pass: ranges cut at keyframes, decoded concurrently, must equal the single pass."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prism.errors import MediaError
from prism.media import chunks, decode_visual, probe
from prism.media.decode import SMALL_FILE, VisualPass
from prism.synth import Shot, Title, ffmpeg

# Cuts one and two frames either side of the 5 s / 10 s / 15 s split targets of a 4-range pass,
# 1 s GOPs with B-frames: every range starts on a keyframe next to a cut.
CHUNK_TITLE = Title(
    [Shot("testsrc2", 4.96), Shot("life", 5.08), Shot("smptehdbars", 4.92), Shot("gradients", 5.04)],
    width=160,
    height=90,
)
CUTS = [124, 251, 374]
H264_GOP = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "25", "-bf", "3"]
VARIANTS = {  # name -> (extension, ffmpeg args from the MP4 original)
    "mp4": ("mp4", None),
    "mkv": ("mkv", ["-c", "copy"]),
    "webm": ("webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "40", "-b:v", "0",
                      "-g", "25", "-an"]),
    "mp4-offset": ("mp4", ["-c", "copy", "-output_ts_offset", "1000"]),
    # 25 fps for 10 s, then every other frame (12.5 fps) on the original timestamps
    "vfr": ("mp4", ["-vf", "select='lt(n,250)+not(mod(n,2))'", "-fps_mode", "vfr", *H264_GOP, "-an"]),
    "ts": ("ts", ["-c", "copy"]),
    # open GOPs: B-frames after a keyframe that show before it and reference the previous GOP
    "rotated": ("mp4", ["-c", "copy", "-metadata:s:v:0", "rotate=90"]),
    "open-gop": ("mp4", ["-c:v", "libx264", "-preset", "veryfast", "-x264-params", "open-gop=1:keyint=25:bframes=3",
                         "-an"]),
}  # fmt: skip
FEATURES = ("luma_mean", "luma_std", "dark_ratio", "clip_low", "clip_high", "sharpness", "diff_prev")


@pytest.fixture(scope="module")
def chunk_video(make_video, media_dir):
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            src, truth = make_video("chunks.mp4", CHUNK_TITLE, codec_args=H264_GOP)
            assert truth.cuts == CUTS
            ext, args = VARIANTS[name]
            if args is None:
                cache[name] = src
            else:
                out = media_dir / f"chunks-{name}.{ext}"
                ffmpeg("-i", str(src), *args, str(out))
                cache[name] = out
        return cache[name]

    return make


def assert_same_pass(chunked: VisualPass, single: VisualPass) -> None:
    assert chunked.frame_count == single.frame_count
    np.testing.assert_array_equal(chunked.times, single.times)
    np.testing.assert_array_equal(chunked.source_times, single.source_times)
    for name in FEATURES:
        np.testing.assert_allclose(getattr(chunked, name), getattr(single, name), rtol=1e-5, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(chunked.thumbs, single.thumbs)
    assert np.asarray(chunked.frames_small).tobytes() == np.asarray(single.frames_small).tobytes()
    assert chunked.fps == pytest.approx(single.fps) and chunked.duration_s == pytest.approx(single.duration_s)


@pytest.mark.parametrize("name", ["mp4", "mkv", "webm", "mp4-offset", "vfr", "open-gop", "rotated"])
def test_chunked_pass_equals_single_pass(chunk_video, name, tmp_path):
    path = chunk_video(name)
    info = probe(path)
    single = decode_visual(path, info, tmp_path / "single", chunks=1)
    splits = chunks.plan_splits(path, info, 4)
    assert len(splits) == 3  # really chunked: three keyframes found, near 5, 10 and 15 s of the title
    for k, split in enumerate(splits, 1):
        assert abs(split.seconds - single.origin_s - 5.0 * k) <= 1.1
    chunked = chunks.decode_chunked(path, info, tmp_path / "chunked", 4)
    assert_same_pass(chunked, single)
    assert [p.name for p in (tmp_path / "chunked").iterdir()] == [SMALL_FILE]  # no range file left
    if name == "vfr":
        assert chunked.variable_frame_rate
    if name == "mp4-offset":
        assert chunked.origin_s == pytest.approx(1000.0, abs=0.1) and chunked.times[0] == 0.0


@pytest.mark.parametrize("damage", ["lying-10h", "truncated"])
def test_lying_or_truncated_file_gives_the_single_pass(chunk_video, damage, media_dir, tmp_path):
    """Split targets come from the declared duration: a header claiming 10 hours puts them past
    the end, a truncated file's index points at data that is not there. Either way the result
    (chunked or fallen back) is the single pass's."""
    from testkit.broken_media import lie_about_duration, truncate_mp4

    path = media_dir / f"chunks-{damage}.mp4"
    if not path.exists():
        if damage == "truncated":
            truncate_mp4(chunk_video("mp4"), path, keep=0.6)
        else:
            lie_about_duration(chunk_video("mp4"), path, 36000.0)
    info = probe(path)
    single = decode_visual(path, info, tmp_path / "single", chunks=1)
    assert_same_pass(decode_visual(path, info, tmp_path / "chunked", chunks=4), single)
    assert [p.name for p in (tmp_path / "chunked").iterdir()] == [SMALL_FILE]


def test_decode_visual_chunks_from_environment(chunk_video, tmp_path, monkeypatch, caplog):
    path = chunk_video("mp4")
    info = probe(path)
    merged: list[int] = []
    real_merge = chunks.merge_ranges
    monkeypatch.setattr(chunks, "merge_ranges", lambda p, i, r, o: merged.append(len(r)) or real_merge(p, i, r, o))
    monkeypatch.setenv(chunks.CHUNKS_ENV, "3")
    progress: list[int] = []
    vp = decode_visual(path, info, tmp_path, lambda done, total: progress.append(done))
    assert merged == [3] and not caplog.records
    assert vp.frame_count == 500 and max(progress) == 500
    monkeypatch.setenv(chunks.CHUNKS_ENV, "many")
    with pytest.raises(ValueError, match="PRISM_DECODE_CHUNKS"):
        decode_visual(path, info, tmp_path)


def test_chunk_count_policy(chunk_video, monkeypatch):
    monkeypatch.delenv(chunks.CHUNKS_ENV, raising=False)
    path, ts = chunk_video("mp4"), chunk_video("ts")
    info = probe(path)
    assert chunks.chunk_count(path, info) == 1  # 20 s: not worth splitting
    long_info = type(info)(**{**info.__dict__, "duration_s": 7200.0, "video": None})
    monkeypatch.setattr(chunks.os, "cpu_count", lambda: 16)
    assert chunks.chunk_count(path, long_info) == 16  # a 2-hour title: one range per core
    assert chunks.chunk_count(path, type(info)(**{**info.__dict__, "duration_s": 150.0, "video": None})) == 2
    assert chunks.chunk_count(path, info, 4) == 4
    assert chunks.chunk_count(ts, probe(ts), 4) == 1  # MPEG-TS: one pass
    with pytest.raises(ValueError):
        chunks.chunk_count(path, info, 0)


def test_mpegts_is_equal_or_cleanly_refused(chunk_video, tmp_path):
    path = chunk_video("ts")
    info = probe(path)
    single = decode_visual(path, info, tmp_path / "single", chunks=1)
    assert_same_pass(decode_visual(path, info, tmp_path / "asked", chunks=4), single)  # decoded in one pass
    try:  # forced: either it joins up exactly or it is refused, never a silently different result
        assert_same_pass(chunks.decode_chunked(path, info, tmp_path / "forced", 4), single)
    except chunks.ChunkingFailed as exc:
        assert str(path) in str(exc)
    assert [p.name for p in (tmp_path / "forced").iterdir()] in ([], [SMALL_FILE])


def test_failing_range_falls_back_to_single_pass(chunk_video, tmp_path, monkeypatch, caplog):
    path = chunk_video("mp4")
    info = probe(path)
    single = decode_visual(path, info, tmp_path / "single", chunks=1)
    real_command = chunks._visual_pass_command

    def broken_last_range(p, i, **kw):  # the last range's ffmpeg fails mid-way (a filter that does not exist)
        cmd = real_command(p, i, **kw)
        if kw.get("start") is not None and kw.get("end") is None:
            cmd[cmd.index("-filter_complex") + 1] += ";nullsrc=d=0.1,no_such_filter[x]"
        return cmd

    monkeypatch.setattr(chunks, "_visual_pass_command", broken_last_range)
    with pytest.raises(chunks.ChunkingFailed, match=str(path)):
        chunks.decode_chunked(path, info, tmp_path / "direct", 4)
    assert list((tmp_path / "direct").iterdir()) == []  # no range file left behind
    with caplog.at_level(logging.WARNING):
        vp = decode_visual(path, info, tmp_path / "fallback", chunks=4)
    assert any(
        "chunked visual pass abandoned" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records
    )
    assert_same_pass(vp, single)
    assert [p.name for p in (tmp_path / "fallback").iterdir()] == [SMALL_FILE]


def test_merge_refuses_ranges_that_do_not_join(chunk_video, tmp_path):
    path = chunk_video("mp4")
    info = probe(path)
    [split] = chunks.plan_splits(path, info, 2)
    head = chunks.decode_range(path, info, tmp_path / "a.u8", None, split)
    tail = chunks.decode_range(path, info, tmp_path / "b.u8", split, None)
    assert head.source_times[-1] < split.seconds == tail.source_times[0]
    late = chunks.VisualRange(  # the keyframe frame lost: the range starts one frame late
        tail.small_file, tail.count - 1, tail.source_times[1:], {k: v[1:] for k, v in tail.features.items()},
        tail.first_luma, tail.last_luma, tail.start, tail.end,
    )  # fmt: skip
    with pytest.raises(chunks.ChunkingFailed, match="not on its keyframe"):
        chunks.merge_ranges(path, info, [head, late], tmp_path / SMALL_FILE)
    with pytest.raises(chunks.ChunkingFailed, match="does not start where"):
        chunks.merge_ranges(path, info, [tail, head], tmp_path / SMALL_FILE)
    with pytest.raises(MediaError, match="no frame decoded"):  # a range past the end of the title
        chunks.decode_range(path, info, tmp_path / "c.u8", chunks.SplitPoint(10**9, split.time_base), None)


def test_ranges_saved_on_one_machine_merge_on_another(chunk_video, tmp_path):
    """The building block for spanning Batch workers: ranges decoded apart, shipped, merged."""
    path = chunk_video("mkv")
    info = probe(path)
    single = decode_visual(path, info, tmp_path / "single", chunks=1)
    splits = chunks.plan_splits(path, info, 3)
    bounds = [None, *splits, None]
    loaded = []
    for k in range(len(bounds) - 1):
        worker = tmp_path / f"worker{k}"
        worker.mkdir()
        part = chunks.decode_range(path, info, worker / "frames.u8", bounds[k], bounds[k + 1])
        chunks.save_range(part, worker / "range.npz")
        loaded.append(chunks.load_range(worker / "range.npz", worker / "frames.u8"))
    assert_same_pass(chunks.merge_ranges(path, info, loaded, tmp_path / SMALL_FILE), single)


def test_shots_cuts_identical_with_and_without_chunks(chunk_video, tmp_path, monkeypatch, caplog):
    """TransNetV2 runs on the merged frames, so range boundaries next to cuts change nothing."""
    from prism.runner import Runner

    path = chunk_video("mp4")
    found = {}
    for n in (1, 4):
        monkeypatch.setenv(chunks.CHUNKS_ENV, str(n))
        [outcome] = Runner(tmp_path / f"out{n}").run([path], ["shots"])
        assert outcome.status == "succeeded"
        shots = pq.read_table(tmp_path / f"out{n}" / "titles" / path.stem / "shots.parquet").to_pylist()
        found[n] = [(s["start_frame"], s["end_frame"], s["transition_in"], s["start_s"]) for s in shots]
    assert not [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert found[4] == found[1]
    starts = [s[0] for s in found[1][1:]]
    assert all(any(abs(s - c) <= 1 for s in starts) for c in CUTS)


def test_range_command_trims_before_anything_else(tmp_path, monkeypatch):
    from fractions import Fraction

    from prism.media.decode import _visual_pass_command
    from prism.media.probe import MediaInfo, VideoStream

    info = MediaInfo("x.mp4", 1, "mov,mp4", 600.0, None, VideoStream("h264", 1920, 1080, 0, 25.0, 25.0, False, None))
    start, end = chunks.SplitPoint(3840000, Fraction(1, 12800)), chunks.SplitPoint(7680000, Fraction(1, 12800))
    monkeypatch.setenv("PRISM_HWACCEL", "cuda")
    cmd = _visual_pass_command(tmp_path / "x.mp4", info, start=start, end=end, threads=2)
    graph = cmd[cmd.index("-filter_complex") + 1]
    assert graph.startswith("[0:v]trim=start_pts=3840000:end_pts=7680000,scale_cuda=960:540")  # on the GPU frames
    assert cmd[cmd.index("-ss") + 1] == "300.000000" and cmd.index("-ss") < cmd.index("-i")
    assert cmd[cmd.index("-threads") + 1] == "2" and "-noaccurate_seek" in cmd


def test_cuda_chunked_pass_matches_the_cpu(chunk_video, media_dir, tmp_path, monkeypatch, caplog):
    """PRISM_HWACCEL=cuda: each range decodes with NVDEC; without a usable GPU (CI) the result is
    still the CPU single pass's, through the fallbacks."""
    hd = media_dir / "chunks-640.mp4"
    if not hd.exists():
        ffmpeg("-i", str(chunk_video("mp4")), "-vf", "scale=640:360", *H264_GOP, "-an", str(hd))
    info = probe(hd)
    monkeypatch.delenv("PRISM_HWACCEL", raising=False)
    cpu = decode_visual(hd, info, tmp_path / "cpu", chunks=1)
    monkeypatch.setenv("PRISM_HWACCEL", "cuda")
    with caplog.at_level(logging.WARNING):
        gpu = decode_visual(hd, info, tmp_path / "gpu", chunks=4)
    assert gpu.frame_count == cpu.frame_count == 500
    np.testing.assert_array_equal(gpu.source_times, cpu.source_times)
    if any("decoding on the CPU" in r.getMessage() for r in caplog.records):
        assert_same_pass(gpu, cpu)
    else:  # a real GPU: halved there, so close but not bit-equal
        np.testing.assert_allclose(gpu.luma_mean, cpu.luma_mean, atol=3.0)
    assert [p.name for p in (tmp_path / "gpu").iterdir()] == [SMALL_FILE]
