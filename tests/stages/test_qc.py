"""QC stage: findings with timecodes on the sample title, profiles as data, detectors on built media, odd input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from prism.errors import ConfigError
from prism.qc import Finding, evaluate, load_profile, profile_names, timecode
from prism.qc import visual as qv
from prism.runner import Runner
from prism.synth import Shot, Title, ffmpeg

FPS = 25.0


@pytest.fixture(scope="module")
def qc_sample(sample_video, tmp_path_factory):
    path, truth = sample_video
    out = tmp_path_factory.mktemp("qc-sample")
    [outcome] = Runner(out).run([path], ["qc"])
    assert outcome.status == "succeeded", outcome
    tdir = out / "titles" / "sample"
    doc = json.loads((tdir / "qc.json").read_text())
    table = pq.read_table(tdir / "qc_findings.parquet").to_pandas()
    return doc, table, truth, tdir


@pytest.mark.slow
def test_sample_title_bars_black_silence_are_findings_with_timecodes(qc_sample):
    doc, table, truth, _ = qc_sample
    bars = table.query("check == 'colour_bars'")
    assert len(bars) == 1
    # shot 3 (smptehdbars, 2 s, then its last frame held 2 s) starts where the dissolve into shot 2 ends
    start, end = truth.cuts[1], truth.frozen[0][1]
    row = bars.iloc[0]
    assert abs(row.start_s * FPS - start) <= 1 and abs(row.end_s * FPS - end) <= 1
    assert row.start_tc == timecode(start / FPS, FPS) == f"00:00:07:{start % 25:02d}"
    assert row.rule == "colour_bars_in_programme" and row.severity == "fail"
    assert row.detail.startswith("arib") and start <= row.evidence_frame < end
    (b0, b1), black = truth.black[0], table.query("check == 'black'").iloc[0]
    assert abs(black.start_s * FPS - b0) <= 3 and abs(black.end_s * FPS - b1) <= 3
    assert black.rule == "black_in_programme" and black.severity == "warn"
    silence = table.query("check == 'silence'")
    assert silence.start_s.tolist() == pytest.approx([6.0, 20.0], abs=0.06)
    assert silence.start_tc.tolist() == ["00:00:06:00", "00:00:20:00"]
    assert set(silence.rule) == {"silence_in_programme"}
    loud = table.query("check == 'loudness_integrated'").iloc[0]
    assert -31 < loud.value < -26 and loud.severity == "fail"  # a sine at 1/16 of full scale: under -24 +/- 2 LKFS
    assert table.query("check == 'channel_layout'").iloc[0].severity == "fail"  # mono; the service wants 2 or 6
    assert doc["verdict"] == "fail" and doc["profile"] == "service"
    assert doc["counts"]["fail"] == len(table.query("severity == 'fail'")) >= 2
    assert doc["rules"]["colour_bars_in_programme"] == 1
    assert not table.query("check in ['flashing', 'red_flashing', 'letterbox', 'pillarbox']").shape[0]


@pytest.mark.slow
def test_report_has_a_qc_lane_and_prism_qc_exits_on_the_verdict(qc_sample, tmp_path):
    from typer.testing import CliRunner

    from prism.cli import app
    from prism.report import write_report

    _, _, _, tdir = qc_sample
    html = write_report(tdir, tmp_path / "r.html").read_text()
    assert ">QC<" in html and "colour_bars_in_programme" in html
    out = tdir.parents[1]
    result = CliRunner().invoke(app, ["qc", "sample", "--out", str(out)])
    assert result.exit_code == 1 and "FAIL against service" in result.output
    assert "00:00:07:12-00:00:11:12  colour_bars_in_programme" in result.output
    judged = CliRunner().invoke(app, ["qc", "sample", "--out", str(out), "--profile", "ebu_r128", "--json"])
    assert judged.exit_code == 1 and json.loads(judged.output)["profile"] == "ebu_r128"
    assert CliRunner().invoke(app, ["qc", "sample", "--out", str(out), "--profile", "nope"]).exit_code == 2
    assert CliRunner().invoke(app, ["qc", "missing", "--out", str(out)]).exit_code == 2


@pytest.mark.slow
def test_findings_judged_against_another_profile_without_reanalysis(qc_sample):
    _, table, _, _ = qc_sample
    findings = [Finding.from_row(r) for r in table.to_dict("records")]
    duration = float(table.query("check == 'audio_tracks'").end_s.iloc[0])
    assert evaluate(findings, load_profile("ebu_r128"), duration) == "fail"
    broken = ("colour_bars", "loudness_integrated", "black", "silence", "frozen", "channel_layout")
    kept = [f for f in findings if f.check not in broken]
    assert evaluate(kept, load_profile("service"), duration) == "pass", [(f.rule, f.severity) for f in kept]


def test_profiles_are_data():
    assert {"service", "ebu_r128", "atsc_a85"} <= set(profile_names())
    ebu, atsc = load_profile("ebu_r128"), load_profile("atsc_a85")
    assert (ebu.target_lufs, ebu.tolerance_lu, ebu.max_true_peak_dbtp) == (-23.0, 1.0, -1.0)
    assert (atsc.target_lufs, atsc.tolerance_lu, atsc.max_true_peak_dbtp) == (-24.0, 2.0, -2.0)
    loud = Finding("loudness_integrated", 0, 60, -22.5)
    assert evaluate([loud], ebu, 60) == "pass" and evaluate([loud], load_profile("service"), 60) == "pass"
    loud.value = -24.5
    assert evaluate([loud], ebu, 60) == "fail" and evaluate([loud], atsc, 60) == "pass"
    with pytest.raises(ConfigError, match="unknown QC profile 'nope'.*service"):
        load_profile("nope")


def test_profile_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[loudness]\ntarget_lufs = -23\n')
    with pytest.raises(ConfigError, match="bad.toml"):
        load_profile(str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_profile(str(broken))


def test_placed_findings_at_head_and_tail_are_info():
    prof = load_profile("service")
    head = Finding("colour_bars", 0.0, 20.0)
    tail = Finding("black", 3570.0, 3600.0)
    inside = Finding("black", 1000.0, 1010.0)
    assert evaluate([head, tail], prof, 3600.0) == "pass"
    assert evaluate([head, tail, inside], prof, 3600.0) == "fail"
    assert inside.rule == "black_long_in_programme" and head.severity == tail.severity == "info"


@pytest.mark.parametrize(
    ("seconds", "fps", "tc"),
    [
        (0.0, 25.0, "00:00:00:00"),
        (3661.48, 25.0, "01:01:01:12"),
        (7.48, 25.0, "00:00:07:12"),
        (1800 / (30000 / 1001), 30000 / 1001, "00:01:00;02"),  # drop frame: frames 0 and 1 of minute 1 skipped
        (17982 / (30000 / 1001), 30000 / 1001, "00:10:00;00"),  # but not of each tenth minute
        (1.0, 24.0, "00:00:01:00"),
    ],
)
def test_timecode(seconds, fps, tc):
    assert timecode(seconds, fps) == tc


def _frame(source: str, tmp_path, w: int = 1280, h: int = 720) -> np.ndarray:
    raw = tmp_path / "f.raw"
    ffmpeg("-f", "lavfi", "-i", f"{source}", "-frames:v", "1", "-vf", f"scale={w}:{h},scale=48:27:flags=area",
           "-f", "rawvideo", "-pix_fmt", "rgb24", str(raw))  # fmt: skip
    return np.fromfile(raw, np.uint8).reshape(27, 48, 3)


@pytest.mark.parametrize(
    ("source", "variant"),
    [
        ("smptebars=size=1280x720", "smpte"),
        ("smptehdbars=size=1920x1080", "arib"),
        ("pal75bars=size=720x576", "ebu"),
        ("pal100bars=size=720x576", "ebu"),
        ("smptebars=size=1280x720,crop=iw:ih*2/3:0:0", "full_field"),
        ("testsrc2=size=1280x720", None),
        ("testsrc=size=1280x720", None),
        ("rgbtestsrc=size=1280x720", None),
        ("mandelbrot=size=1280x720", None),
        ("color=c=red:size=1280x720", None),
    ],
)
def test_bar_variants(source, variant, tmp_path):
    assert qv.bar_variant(_frame(source, tmp_path))[0] == variant


def _strobe(hz: float, seconds: float, *, red: bool = False, area: float = 1.0, fps: float = 25.0) -> np.ndarray:
    """48x27 frames alternating dark grey and white (or saturated red) at ``hz`` flashes a second over ``area``."""
    n = int(seconds * fps)
    frames = np.full((n, 27, 48, 3), 40, np.uint8)
    on = (np.floor(np.arange(n) / fps * hz * 2) % 2).astype(bool)
    cols = int(round(48 * area))
    bright = np.array([230, 0, 0] if red else [235, 235, 235], np.uint8)
    frames[on, :, :cols] = bright
    return frames


@pytest.mark.parametrize(
    ("hz", "area", "red", "expected"),
    [
        (10.0, 1.0, False, ["flashing"]),
        (5.0, 0.5, False, ["flashing"]),
        (8.0, 1.0, True, ["flashing", "red_flashing"]),
        (3.0, 1.0, False, []),  # 3 flashes a second is the limit, not over it
        (10.0, 0.2, False, []),  # under a quarter of the screen
    ],
)
def test_flashing(hz, area, red, expected):
    frames = _strobe(hz, 3.0, red=red, area=area)
    times = np.arange(frames.shape[0]) / FPS
    found = qv.flashing(frames, times, frames.shape[0] / FPS)
    assert sorted({f.check for f in found}) == expected
    for f in found:
        assert f.value == pytest.approx(hz, abs=1.0) and f.end_s - f.start_s >= 2.0


def test_letterbox_and_pillarbox_per_shot():
    n = 50
    box = np.tile(np.array([9, 63, 0, 128], np.int16), (n, 1))  # 2.39:1-like bars in a 16:9 frame
    box[25:] = (0, 72, 16, 112)  # then 4:3 pillarbox
    black = np.zeros(n, bool)
    times = np.arange(n) / FPS
    found = qv.active_area(box, black, [(0, 25), (25, 50)], times, n / FPS, 1920, 1080, (72, 128))
    checks = [f.check for f in found]
    assert checks == ["letterbox", "pillarbox", "active_area_change"]
    assert found[0].value == pytest.approx(1920 / (1080 * 54 / 72), abs=0.01)
    assert found[1].value == pytest.approx(1920 * 96 / 128 / 1080, abs=0.01)
    assert found[1].start_s == pytest.approx(1.0)


ODD = {
    "no-audio": (Title([Shot("testsrc2", 1.0)], width=160, height=90, audio=False), []),
    "vertical": (Title([Shot("testsrc2", 1.0)], width=90, height=160), []),
    "one-frame": (Title([Shot("testsrc2", 0.04)], width=160, height=90), []),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_input_gives_findings_not_crashes(name, make_video, tmp_path):
    title, _ = ODD[name]
    path, _ = make_video(f"qc-{name}.mp4", title)
    [outcome] = Runner(tmp_path).run([path], ["qc"])
    assert outcome.status == "succeeded", outcome
    doc = json.loads((tmp_path / "titles" / path.stem / "qc.json").read_text())
    tracks = next(f for f in doc["findings"] if f["check"] == "audio_tracks")
    assert tracks["value"] == (0 if name == "no-audio" else 1)
    if name == "no-audio":
        assert doc["verdict"] == "fail" and doc["rules"]["audio_tracks"] == 1 and doc["not_checked"]["audio"]


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "tracks", "channels", "verdict_rule"), [
    ("mono", 1, 1, "channel_layout"),
    ("5.1", 1, 6, None),
    ("stereo", 8, 2, None),
])  # fmt: skip
def test_channel_layouts(layout, tracks, channels, verdict_rule, make_video, media_dir, tmp_path):
    src, _ = make_video("qc-layout-src.mp4", Title([Shot("testsrc2", 1.0)], width=160, height=90, audio=False))
    path = media_dir / f"qc-{layout}-{tracks}.mp4"
    args = ["-i", str(src)]
    for _ in range(tracks):
        args += [
            "-f",
            "lavfi",
            "-t",
            "1",
            "-i",
            f"sine=frequency=440:sample_rate=48000,aformat=channel_layouts={layout},volume=0.05",
        ]
    args += (
        ["-map", "0:v"]
        + [x for k in range(tracks) for x in ("-map", f"{k + 1}:a")]
        + ["-c:v", "copy", "-c:a", "aac", str(path)]
    )
    ffmpeg(*args)
    [outcome] = Runner(tmp_path).run([path], ["qc"])
    assert outcome.status == "succeeded", outcome
    doc = json.loads((tmp_path / "titles" / path.stem / "qc.json").read_text())
    layouts = [f for f in doc["findings"] if f["check"] == "channel_layout"]
    assert len(layouts) == tracks and {f["value"] for f in layouts} == {channels}
    assert (verdict_rule in doc["rules"]) if verdict_rule else "channel_layout" not in doc["rules"]


AUDIO_FAULTS = {  # name -> (ffmpeg lavfi source of 6 s of stereo, the checks it must raise)
    "clean": ("sine=440:sample_rate=48000:d=6[a];sine=660:sample_rate=48000:d=6[b];[a][b]amerge=inputs=2", set()),
    "silent-right": ("sine=440:sample_rate=48000:d=6,pan=stereo|c0=c0|c1=0*c0", {"silent_channel"}),
    "inverted": ("sine=440:sample_rate=48000:d=6,pan=stereo|c0=c0|c1=-1*c0", {"phase_inverted"}),
    "dual-mono": ("sine=440:sample_rate=48000:d=6,pan=stereo|c0=c0|c1=c0", {"dual_mono"}),
    "clipped": ("sine=440:sample_rate=48000:d=6,volume=12,pan=stereo|c0=c0|c1=0.5*c0", {"clipping"}),
    "tone": ("sine=1000:sample_rate=48000:d=6,volume=0.9,pan=stereo|c0=c0|c1=c0", {"dual_mono", "lineup_tone"}),
}


@pytest.mark.parametrize("name", sorted(AUDIO_FAULTS))
def test_audio_faults_from_the_shared_decode(name, tmp_path):
    """Channel faults come from the track's one decode (the channel branch of TrackStream), replayed from its spool."""
    from prism.audio.pcm import ANALYSIS_RATE, TrackStream
    from prism.qc import audio as qa

    graph, expected = AUDIO_FAULTS[name]
    path = tmp_path / f"{name}.mkv"
    ffmpeg("-filter_complex", graph, "-c:a", "pcm_s16le", str(path))
    first = TrackStream(path, 0, channels=2, sample_rate=48000, block_s=1.0, spool=tmp_path / "a.f32")
    blocks = list(first.blocks())
    replay = TrackStream(path, 0, channels=2, sample_rate=48000, block_s=1.0, spool=tmp_path / "a.f32")
    assert replay.spooled()
    replayed = list(replay.blocks())
    assert replay.channel_stats.to_dict() == first.channel_stats.to_dict() and len(first.channel_stats.times) == 6
    found = qa.channel_findings(replay.channel_stats, 0.0, -60.0) + qa.lineup_tone(replayed, ANALYSIS_RATE)
    assert {f.check for f in found} == expected, [(f.check, f.value) for f in found]
    assert sum(b.size for b in blocks) == 6 * ANALYSIS_RATE
    for f in found:
        assert f.start_s == pytest.approx(0.0, abs=0.5) and f.end_s == pytest.approx(6.0, abs=0.5)


DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
NANUM = "/usr/share/fonts/truetype/nanum/NanumGothic.ttf"


def _lines(lines: list[str], font: str, size: int = 26, y0: int = 40, step: int = 44) -> str:
    return ",".join(
        f"drawtext=fontfile={font}:text='{t}':fontsize={size}:fontcolor=white:x=(w-tw)/2:y={y0 + i * step}"
        for i, t in enumerate(lines)
    )


@pytest.mark.slow
def test_slate_subtitles_and_korean_end_credits(media_dir, tmp_path):
    """A slate card at the head, a shot with a burnt-in subtitle, a clean shot, Korean end credits at the tail."""
    path = media_dir / "qc-text.mp4"
    if not path.exists():
        slate = _lines(["PRODUCTION  PRISM QC", "TITLE  THE LONG NIGHT", "EPISODE  101", "DATE  2026-12-06",
                        "DURATION  00 11 00", "AUDIO  STEREO"], DEJAVU)  # fmt: skip
        sub = (
            "drawtext=fontfile="
            + DEJAVU
            + ":text='I never said that.':fontsize=28:fontcolor=white:borderw=2:x=(w-tw)/2:y=h-60"
        )
        credits = _lines(
            ["감독  김지수", "각본  이서연", "촬영  박민준", "음악  최유나", "Directed by Kim Ji-su"], NANUM, y0=60
        )
        ffmpeg(
            "-f", "lavfi", "-i", f"color=c=0x202020:size=640x360:rate=25:d=2,{slate}",
            "-f", "lavfi", "-i", f"mandelbrot=size=640x360:rate=25,trim=duration=3,{sub}",
            "-f", "lavfi", "-i", "gradients=size=640x360:rate=25:speed=0.02:seed=3,trim=duration=3",
            "-f", "lavfi", "-i", f"color=c=black:size=640x360:rate=25:d=3,{credits}",
            "-filter_complex", "[0][1][2][3]concat=n=4:v=1:a=0,format=yuv420p[v]", "-map", "[v]",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-g", "25", str(path),
        )  # fmt: skip
    [outcome] = Runner(tmp_path).run([path], ["qc"])
    assert outcome.status == "succeeded", outcome
    table = pq.read_table(tmp_path / "titles" / path.stem / "qc_findings.parquet").to_pandas()
    by_check = {c: g for c, g in table.groupby("check")}
    assert set(by_check) >= {"slate", "burnt_in_subtitles", "credits"}, table[["check", "start_s", "end_s"]]
    (slate,) = by_check["slate"].itertuples()
    assert slate.start_s == 0.0 and slate.end_s == pytest.approx(2.0, abs=0.1) and slate.value >= 4
    (sub,) = by_check["burnt_in_subtitles"].itertuples()
    assert sub.start_s == pytest.approx(2.0, abs=0.1) and sub.end_s == pytest.approx(5.0, abs=0.1)
    (cred,) = by_check["credits"].itertuples()
    assert cred.start_s == pytest.approx(8.0, abs=0.1) and cred.detail.startswith("end credits")


def test_interlacing_from_a_sampled_idet(tmp_path):
    """Woven fields (one field order) are interlaced; a progressive pan is not; mixed field orders (fine
    synthetic detail that idet misreads) are not either."""
    made = {}
    for name, vf, extra in (
        ("inter", "tinterlace=mode=interleave_top,", ["-flags", "+ilme+ildct", "-x264opts", "tff=1"]),
        ("prog", "", []),
    ):  # fmt: skip
        rate = 50 if name == "inter" else 25
        made[name] = tmp_path / f"{name}.mp4"
        ffmpeg("-f", "lavfi", "-i", f"mandelbrot=size=720x576:rate={rate},trim=duration=3", "-vf", f"{vf}format=yuv420p",
               "-c:v", "libx264", "-preset", "veryfast", *extra, "-r", "25", str(made[name]))  # fmt: skip
    [found] = qv.interlacing(qv.sampled_idet(made["inter"], 3.0), 3.0)
    assert found.check == "interlaced" and found.value > 0.8 and found.detail.startswith("top field first")
    assert qv.interlacing(qv.sampled_idet(made["prog"], 3.0), 3.0) == []
    assert qv.interlacing((34, 22, 19, 0), 3.0) == []  # testsrc2 at 25p: both orders, so not interlaced
    assert qv.interlacing((0, 70, 5, 0), 3.0)[0].detail.startswith("bottom field first")


def test_thin_letterbox_of_1_85_in_16_9_is_found():
    """1.85:1 in a 16:9 frame leaves bars of 2.6 % of the height: under two rows of the 72-row analysis frame."""
    box = np.tile(np.array([1, 71, 0, 128], np.int16), (25, 1))
    [found] = qv.active_area(box, np.zeros(25, bool), [(0, 25)], np.arange(25) / FPS, 1.0, 1920, 1080, (72, 128))
    assert found.check == "letterbox" and found.value == pytest.approx(1.83, abs=0.03)
