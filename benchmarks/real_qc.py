"""Content QC detectors: precision and recall on media built from real photographs and speech.

Each case is a short clip built with ffmpeg from scikit-image's bundled photographs (astronaut,
coffee, chelsea, rocket, Hubble deep field, retina, immunohistochemistry, colour wheel: the
``bench`` extra) or from ffmpeg's own bar generators, decoded by Prism's real visual pass
(``decode_visual``) and judged by the same detector functions the ``qc`` stage calls; audio
cases are espeak-ng speech made into stereo with and without faults, decoded by the shared track
decode (``TrackStream``, channel branch included). A case counts as detected when the detector
returns any finding of the check; precision and recall are over cases.

    python -m benchmarks.real_qc            # prints the markdown section
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from prism.media import decode_visual, probe
from prism.synth import ffmpeg

W, H, FPS = 640, 360, 25
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "colorwheel",
)


def _photos(work: Path) -> list[Path]:
    import skimage.data
    from PIL import Image

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        path = work / f"{name}.png"
        Image.fromarray(img[..., :3] if img.ndim == 3 else np.stack([img] * 3, -1)).save(path)
        out.append(path)
    return out


def _pan(photo: Path, seconds: float = 2.0, size: tuple[int, int] = (W, H)) -> list[str]:
    """ffmpeg input args: the photo filling the frame, panning slowly (a real shot, not a still)."""
    w, h = size
    return ["-loop", "1", "-t", str(seconds), "-framerate", str(FPS), "-i", str(photo),
            "-vf", f"scale={int(w * 1.25)}:{int(h * 1.25)}:force_original_aspect_ratio=increase,"
                   f"crop={w}:{h}:x='(iw-{w})*t/{seconds}':y='(ih-{h})/2',format=yuv420p"]  # fmt: skip


def _encode(args: list[str], out: Path) -> Path:
    ffmpeg(
        *args, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-r", str(FPS), str(out)
    )
    return out


def _visual(path: Path, work: Path):
    return decode_visual(path, probe(path), work / (path.stem + ".work"), chunks=1)


def _score(results: list[tuple[bool, bool]]) -> tuple[float, float, int, int, int]:
    tp = sum(t and p for t, p in results)
    fp = sum(p and not t for t, p in results)
    fn = sum(t and not p for t, p in results)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, tp, fp, fn


def bars_cases(work: Path, photos: list[Path]) -> tuple[list[tuple[bool, bool]], int, int]:
    from prism.qc import visual as qv

    sources = {
        "smpte": ["smptebars=size=720x480", "smptebars=size=1280x720", "smptebars=size=1920x1080"],
        "arib": ["smptehdbars=size=1920x1080", "smptehdbars=size=1280x720"],
        "ebu": ["pal75bars=size=720x576", "pal100bars=size=720x576", "pal75bars=size=1920x1080"],
        "full_field": [
            "smptebars=size=1280x720:rate=25,crop=iw:ih*2/3:0:0",
            "pal75bars=size=1280x720:rate=25,crop=iw*7/8:ih:0:0",
        ],
    }
    results, variants_right, positives = [], 0, 0
    for variant, srcs in sources.items():
        for k, src in enumerate(srcs):
            src = src if "rate=" in src else f"{src}:rate={FPS}"
            path = _encode(["-f", "lavfi", "-t", "2", "-i", f"{src},scale={W}:{H},format=yuv420p"],
                           work / f"bars-{variant}-{k}.mp4")  # fmt: skip
            vp = _visual(path, work)
            found = qv.colour_bars(vp.frames_small, vp.times, vp.duration_s)
            results.append((True, bool(found)))
            positives += 1
            variants_right += bool(found) and found[0].detail.startswith(variant + ":")
    negatives = [["-f", "lavfi", "-t", "2", "-i", f"{s}=size={W}x{H}:rate={FPS},format=yuv420p"]
                 for s in ("testsrc", "testsrc2", "rgbtestsrc", "yuvtestsrc")]  # fmt: skip
    negatives += [_pan(p) for p in photos]
    for k, args in enumerate(negatives):
        vp = _visual(_encode(args, work / f"nobars-{k}.mp4"), work)
        results.append((False, bool(qv.colour_bars(vp.frames_small, vp.times, vp.duration_s))))
    return results, variants_right, positives


def flash_cases(work: Path, photos: list[Path]) -> list[tuple[bool, bool, str]]:
    from prism.qc import visual as qv

    cases: list[tuple[bool, str, list[str]]] = []
    for k, photo in enumerate(photos[:4]):
        pan = _pan(photo, 3.0)
        base = pan[:-2]
        vf = pan[-1]
        for hz, area, fails in ((1.0, 1.0, False), (2.0, 1.0, False), (3.0, 1.0, False), (4.0, 1.0, True),
                                (6.0, 1.0, True), (10.0, 1.0, True), (10.0, 0.15, False), (10.0, 0.5, True)):  # fmt: skip
            on = f"lt(mod(t*{hz}*2,2),1)"
            box = f"drawbox=x=0:y=0:w=iw*{area}:h=ih:c=white@0.9:t=fill:enable='{on}'"
            cases.append((fails, f"{hz:g} Hz over {area:.0%} on {photo.stem}", [*base, "-vf", f"{vf},{box}"]))
        red = "drawbox=x=0:y=0:w=iw:h=ih:c=0xff0000@0.9:t=fill:enable='lt(mod(t*8,2),1)'"
        cases.append((True, f"4 Hz red on {photo.stem}", [*base, "-vf", f"{vf},{red}"]))
        # a fast montage: a cut every 0.4 s between this photo and another (2.5 cuts a second: not flashing)
        shots = [photo, photos[k + 4]] * 3
        inputs = [x for shot in shots for x in ("-loop", "1", "-t", "0.4", "-framerate", str(FPS), "-i", str(shot))]
        scale = f"scale={W}:{H}:force_original_aspect_ratio=increase,crop={W}:{H},setsar=1,format=yuv420p"
        graph = ";".join(f"[{i}]{scale}[s{i}]" for i in range(6)) + ";" + "".join(f"[s{i}]" for i in range(6))
        cases.append(
            (
                False,
                f"montage cuts on {photo.stem}",
                [*inputs, "-filter_complex", graph + "concat=n=6:v=1:a=0[v]", "-map", "[v]"],
            )
        )
    out = []
    for k, (truth, label, args) in enumerate(cases):
        try:
            vp = _visual(_encode(args, work / f"flash-{k}.mp4"), work)
        except RuntimeError as exc:  # a case that cannot be built is a bug of the benchmark, not a result
            raise RuntimeError(f"case {label}: {exc}") from exc
        out.append((truth, bool(qv.flashing(vp.frames_small, vp.times, vp.duration_s)), label))
    return out


def letterbox_cases(work: Path, photos: list[Path]) -> list[tuple[str, str, str]]:
    from prism.qc import visual as qv

    frames = {"letterbox 2.39": ("letterbox", f"scale={W}:{round(W / 2.39) // 2 * 2},pad={W}:{H}:(ow-iw)/2:(oh-ih)/2"),
              "letterbox 1.85": ("letterbox", f"scale={W}:{round(W / 1.85) // 2 * 2},pad={W}:{H}:(ow-iw)/2:(oh-ih)/2"),
              "pillarbox 4:3": ("pillarbox", f"scale={H * 4 // 3}:{H},pad={W}:{H}:(ow-iw)/2:(oh-ih)/2"),
              "full frame": ("none", f"scale={W}:{H}")}  # fmt: skip
    out = []
    for k, photo in enumerate(photos):
        for label, (truth, vf) in frames.items():
            pan = _pan(photo, 1.0)
            args = [*pan[:-1], pan[-1].replace(",format=yuv420p", f",{vf},format=yuv420p")]
            vp = _visual(_encode(args, work / f"lb-{k}-{label.replace(' ', '_').replace(':', '')}.mp4"), work)
            assert vp.active_box is not None
            found = qv.active_area(vp.active_box, vp.dark_ratio >= 0.98, [(0, vp.frame_count)], vp.times,
                                   vp.duration_s, W, H, (72, 128))  # fmt: skip
            got = sorted({f.check for f in found if f.check in ("letterbox", "pillarbox")})
            out.append(
                (truth, got[0] if len(got) == 1 else "none" if not got else "windowbox", f"{label} on {photo.stem}")
            )
    return out


def audio_cases(work: Path) -> list[tuple[str, set[str]]]:
    from prism.audio.pcm import ANALYSIS_RATE, TrackStream
    from prism.qc import audio as qa

    speech = work / "speech.wav"
    text = ("Content quality control reads the programme once. The loudness, the channels and the picture are "
            "measured, and every finding carries its time code so an operator can find it again.")  # fmt: skip
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(speech), text], check=True, capture_output=True)
    other = work / "speech2.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "-w", str(other), text[::-1][:120]], check=True,
                   capture_output=True)  # fmt: skip
    mono = "aresample=48000,aformat=sample_fmts=fltp:channel_layouts=mono,apad=whole_dur=8,atrim=0:8"
    stereo = f"[0:a]{mono}[l];[1:a]{mono}[r];[l][r]amerge=inputs=2"
    faults = {
        "clean stereo": (stereo, set()),
        "right channel silent": (f"[0:a]{mono},pan=stereo|c0=c0|c1=0*c0", {"silent_channel"}),
        "polarity inverted": (f"[0:a]{mono},pan=stereo|c0=c0|c1=-1*c0", {"phase_inverted"}),
        "dual mono": (f"[0:a]{mono},pan=stereo|c0=c0|c1=c0", {"dual_mono"}),
        "clipped": (stereo + ",volume=30", {"clipping"}),
        "line-up tone": ("sine=1000:sample_rate=48000:d=3,volume=0.5,pan=stereo|c0=c0|c1=c0[t];"
                         f"{stereo}[p];[t][p]concat=n=2:v=0:a=1", {"lineup_tone"}),
        "5.1 with silent centre": ("[0:a]aresample=48000,apad=whole_dur=8,atrim=0:8,"
                                   "pan=5.1|c0=c0|c1=0.8*c0|c2=0*c0|c3=0.3*c0|c4=0.5*c0|c5=0.4*c0", {"silent_channel"}),
    }  # fmt: skip
    out = []
    for k, (label, (graph, expected)) in enumerate(faults.items()):
        path = work / f"audio-{k}.mkv"
        ffmpeg("-i", str(speech), "-i", str(other), "-filter_complex", graph, "-c:a", "pcm_s16le", str(path))
        info = probe(path)
        track = info.audio_tracks[0]
        stream = TrackStream(path, 0, channels=track.channels, sample_rate=track.sample_rate or 48000, block_s=2.0)
        blocks = list(stream.blocks())
        found = qa.channel_findings(stream.channel_stats, 0.0, -60.0) + qa.lineup_tone(blocks, ANALYSIS_RATE)
        out.append((label, expected, {f.check for f in found}))
    return out


def interlace_cases(work: Path, photos: list[Path]) -> list[tuple[bool, bool]]:
    """Photos panned at 50 fps and woven into 25 fps interlaced frames (tff and bff), against progressive pans."""
    from prism.qc import visual as qv

    out = []
    for k, photo in enumerate(photos):
        pan = _pan(photo, 14.0, (720, 576))
        for label, vf, extra in (
            ("progressive", pan[-1], []),
            ("tff", pan[-1].replace(",format", ",tinterlace=mode=interleave_top,format"), ["-flags", "+ilme+ildct", "-x264opts", "tff=1"]),
            ("bff", pan[-1].replace(",format", ",tinterlace=mode=interleave_bottom,format"), ["-flags", "+ilme+ildct", "-x264opts", "bff=1"]),
        ):  # fmt: skip
            args = [
                *pan[:2],
                "-t",
                "14",
                "-framerate",
                "50" if label != "progressive" else str(FPS),
                *pan[6:-2],
                "-vf",
                vf,
            ]
            path = work / f"il-{k}-{label}.mp4"
            ffmpeg(
                *args,
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "20",
                *extra,
                "-pix_fmt",
                "yuv420p",
                "-r",
                "25",
                str(path),
            )
            found = qv.interlacing(qv.sampled_idet(path, 14.0), 14.0)
            out.append((label != "progressive", bool(found)))
    return out


DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
NANUM = "/usr/share/fonts/truetype/nanum/NanumGothic.ttf"
SLATE = ["PRODUCTION  NORTHERN LIGHTS", "TITLE  THE LONG NIGHT", "EPISODE  104", "DATE  2026-11-30",
         "DURATION  00:52:10:00", "AUDIO  5.1 + STEREO", "ASPECT  16:9"]  # fmt: skip
CREDITS_LATIN = ["Directed by Kim Ji-su", "Written by Lee Seo-yeon", "Director of Photography Park Min-jun",
                 "Music by Choi Yu-na", "Edited by Jung Ha-eun"]  # fmt: skip
CREDITS_KOREAN = ["감독  김지수", "각본  이서연", "촬영  박민준", "음악  최유나", "편집  정하은"]
SUBTITLES = ["I never said that.", "Where were you last night?", "우리 내일 다시 만나요.", "Keep your voice down."]


def _card(lines: list[str], font: str, background, size: int, top: int, step: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = background.copy() if isinstance(background, Image.Image) else Image.new("RGB", (1280, 720), background)
    draw = ImageDraw.Draw(img)
    face = ImageFont.truetype(font, size)
    for i, text in enumerate(lines):
        w = draw.textlength(text, font=face)
        draw.text(
            ((1280 - w) / 2, top + i * step),
            text,
            font=face,
            fill=(235, 235, 235),
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
    return np.asarray(img)


def text_cases(photos: list[Path]) -> dict[str, list[tuple[bool, bool]]]:
    """Per frame: a dense text card (slate, >= 4 lines), a credit card (>= 3 lines, not a subtitle) and a
    burnt-in subtitle (a line centred in the bottom band), each against the others and clean photos.
    Which card is a slate and which credits is told by its place in the title, not measured here."""
    from PIL import Image

    from prism.qc import text as qt
    from prism.vision.text import load_text_detector

    detector = load_text_detector(limit_side_len=360)
    frames: list[tuple[str, np.ndarray]] = []
    for k, bg in enumerate([(32, 32, 32), (10, 10, 40), (200, 200, 200), (0, 0, 0)]):
        frames.append(("slate", _card(SLATE[k % 2 :][:6], DEJAVU, bg if k != 2 else (60, 60, 60), 34, 120, 70)))
    for k in range(4):
        frames.append(("credits", _card((CREDITS_LATIN * 2)[k : k + 3 + k % 2], DEJAVU, (0, 0, 0), 38, 200, 90)))
        frames.append(("credits", _card((CREDITS_KOREAN * 2)[k : k + 3 + k % 2], NANUM, (0, 0, 0), 40, 200, 90)))
    pictures = [Image.open(p).convert("RGB").resize((1280, 720)) for p in photos]
    for k, pic in enumerate(pictures):
        line = SUBTITLES[k % len(SUBTITLES)]
        font = NANUM if any("\uac00" <= ch <= "\ud7a3" for ch in line) else DEJAVU
        frames.append(("subtitle", _card([line], font, pic, 40, 620, 0)))
        frames.append(("clean", np.asarray(pic)))
    out: dict[str, list[tuple[bool, bool]]] = {"slate": [], "credits": [], "subtitle": []}
    for kind, frame in frames:
        t = qt.measure(detector.detect(frame), 0, 0, 0.0, 1.0)
        out["slate"].append((kind == "slate", t.lines >= qt.SLATE_LINES))
        out["credits"].append((kind in ("slate", "credits"), t.lines >= qt.CREDIT_LINES and t.bottom_centred < t.lines))
        out["subtitle"].append((kind == "subtitle", t.bottom_centred > 0))
    return out


def cost(work: Path, photos: list[Path]) -> dict[str, float]:
    """Seconds per title-minute: the visual pass alone, then the QC picture detectors over it."""
    from prism.qc import visual as qv

    parts = [work / f"cost-{k}.mp4" for k in range(len(photos))]
    for part, photo in zip(parts, photos):
        _encode(_pan(photo, 7.5, (1280, 720)), part)
    listing = work / "cost.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    title = work / "cost-title.mp4"
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(title))
    t0 = time.perf_counter()
    vp = _visual(title, work)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    qv.colour_bars(vp.frames_small, vp.times, vp.duration_s)
    bars_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    qv.flashing(vp.frames_small, vp.times, vp.duration_s)
    flash_s = time.perf_counter() - t0
    minutes = vp.duration_s / 60
    from prism.vision.text import load_text_detector

    detector = load_text_detector(limit_side_len=360)
    frame = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(photos[0]).convert("RGB").resize((1280, 720)))
    detector.detect(frame)  # the session's first run allocates
    t0 = time.perf_counter()
    for _ in range(5):
        detector.detect(frame)
    text_s = (time.perf_counter() - t0) / 5
    return {"minutes": minutes, "decode": decode_s / minutes, "bars": bars_s / minutes, "flashing": flash_s / minutes,
            "text_per_keyframe": text_s}  # fmt: skip


def section() -> str:
    work = Path(tempfile.mkdtemp(prefix="prism-real-qc-"))
    try:
        photos = _photos(work)
        bars, variants_right, positives = bars_cases(work, photos)
        flashes = flash_cases(work, photos)
        boxes = letterbox_cases(work, photos)
        audio = audio_cases(work)
        interlaced = interlace_cases(work, photos[:4])
        texts = text_cases(photos)
        costs = cost(work, photos)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["### Content QC detectors (issue 22; real photographs, fonts and speech)", "",
             "`python -m benchmarks.real_qc`: clips built from scikit-image's bundled photographs "
             f"({', '.join(PHOTOS)}), panned at {W}x{H} {FPS} fps and encoded with x264 (CRF 23), or from ffmpeg's bar "
             "generators; decoded by Prism's visual pass and judged by the `qc` stage's detector functions. "
             "Audio: espeak-ng speech made into stereo or 5.1 with and without faults, through the shared track decode.",
             "", "| detector | cases | precision | recall | TP / FP / FN |", "|---|---|---|---|---|"]  # fmt: skip
    p, r, tp, fp, fn = _score(bars)
    lines.append(
        f"| colour bars (SMPTE, ARIB, EBU, full-field vs photos and test sources) | {len(bars)} | {p:.2f} | {r:.2f} | {tp} / {fp} / {fn} |"
    )
    p, r, tp, fp, fn = _score([(t, d) for t, d, _ in flashes])
    lines.append(
        f"| flashing (1-10 Hz over 15-100 % of photos, red, fast montage) | {len(flashes)} | {p:.2f} | {r:.2f} | {tp} / {fp} / {fn} |"
    )
    for kind in ("letterbox", "pillarbox"):
        p, r, tp, fp, fn = _score([(t == kind, g == kind) for t, g, _ in boxes])
        lines.append(
            f"| {kind} (2.39, 1.85, 4:3 and full frame on 8 photos) | {len(boxes)} | {p:.2f} | {r:.2f} | {tp} / {fp} / {fn} |"
        )
    p, r, tp, fp, fn = _score(interlaced)
    lines.append(
        f"| interlacing (sampled idet; tff, bff, progressive pans of 4 photos) | {len(interlaced)} | {p:.2f} | {r:.2f} | {tp} / {fp} / {fn} |"
    )
    for kind, what in (("slate", "slate: a card with >= 5 text lines (vs 3-4 line credit cards, subtitles, photos)"),
                       ("credits", "credit card, Latin and Korean: >= 3 lines (slates count; vs subtitles, photos)"),
                       ("subtitle", "burnt-in subtitle: a line centred in the bottom band of a photo")):  # fmt: skip
        p, r, tp, fp, fn = _score(texts[kind])
        lines.append(f"| {what} | {len(texts[kind])} | {p:.2f} | {r:.2f} | {tp} / {fp} / {fn} |")
    checks = sorted({c for _, e, _ in audio for c in e})
    for check in checks:
        p, r, tp, fp, fn = _score([(check in e, check in g) for _, e, g in audio])
        lines.append(f"| audio: {check} | {len(audio)} | {p:.2f} | {r:.2f} | {tp} / {fp} / {fn} |")
    lines += ["", f"Bar variant named right on {variants_right} of {positives} bar clips.",
              "Misses and false alarms: " + (", ".join(
                  [lbl for t, d, lbl in flashes if t != d] + [f"{lbl} read as {g}" for e, g, lbl in boxes if e != g]
                  + [f"audio {lbl}: expected {sorted(e)}, got {sorted(g)}" for lbl, e, g in audio if e != g]) or "none") + ".",
              "", f"Cost on a {costs['minutes'] * 60:.0f} s 1280x720 title of panned photos (one core of the benchmark machine, "
              f"seconds per title-minute): visual pass {costs['decode']:.2f} (already paid by shots/cues), colour bars "
              f"{costs['bars']:.3f}, flashing {costs['flashing']:.3f}; letterbox reads the pass's per-frame active area "
              f"(computed in the pass's reduction). Text checks: {costs['text_per_keyframe']:.2f} s per 1280x720 keyframe "
              "at limit_side_len=360, at most 120 keyframes a title. Audio channel checks ride the track's one decode "
              "(an `astats` branch on the channels and their mid/side)."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section())
