"""Benchmark the ``audio`` stage on English and Korean dialogues: quality and real-time factor.

Generates its own inputs (prism.audio.synth: espeak-ng voices over music and silence, repeated
to about ``minutes`` of audio per language), runs the stage once to load the models, then times
a second, forced run of each language through the Runner. For each language: WER (English) or
CER (Korean), the detected language and its probability, speakers found vs true, turn boundary
error, and RTF (seconds of audio per second of stage time, so higher is faster). Also: the
language the detector gives for each Korean espeak-ng voice alone (how far synthetic Korean can
be trusted as a detection test), and the EBU reference tone's loudness error.

    python benchmarks/audio.py [--minutes 1.5] [--batch-size 0] [--device auto] [--model NAME|DIR] [--doc docs/benchmarks.md]

``--doc`` rewrites only the ``### Audio`` section of that Markdown file. ``run(out_dir, ...) -> dict``
(flat keys) is the entry point for the benchmarks package.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

KOREAN_PROBE_VOICES = ("ko", "ko+f2", "ko+m1", "ko+klatt", "ko+klatt2")


def _dialogue(out: Path, lang: str, params: dict, repeat: int) -> dict:
    import pyarrow.parquet as pq

    from prism.audio.scoring import character_error_rate, word_error_rate
    from prism.audio.synth import DEFAULT_LINES, KOREAN_LINES, KOREAN_VOICES, VOICES, build_dialogue
    from prism.runner import Runner

    lines, voices = (KOREAN_LINES, KOREAN_VOICES) if lang == "ko" else (DEFAULT_LINES, VOICES)
    video = out / f"dialogue_{lang}.mp4"
    truth = build_dialogue(video, lines=lines, voices=voices, repeat=repeat)
    t0 = time.perf_counter()
    title = Runner(out / f"out-{lang}", params=params, force=True).run([video], ["audio"])[0]
    wall = time.perf_counter() - t0
    stage = title.stages[0]
    if stage.status != "succeeded":
        raise RuntimeError(f"audio stage {stage.status} on {lang}: {stage.reason}")
    tdir = title.title_dir
    metrics = json.loads((tdir / "manifest.json").read_text())["stages"]["audio"]["metrics"]
    transcript = json.loads((tdir / "transcript.json").read_text())
    turns = pq.read_table(tdir / "speakers.parquet").to_pylist()
    hypothesis = " ".join(s["text"] for s in transcript["segments"])
    err = [max(abs(g["start_s"] - w.start_s), abs(g["end_s"] - w.end_s)) for w, g in zip(truth.turns, turns)]
    score = character_error_rate if lang == "ko" else word_error_rate
    return {
        f"{lang}.audio_s": round(truth.duration_s, 2),
        f"{lang}.stage_s": round(stage.duration_s, 2),
        f"{lang}.wall_s": round(wall, 2),
        f"{lang}.rtf": round(truth.duration_s / stage.duration_s, 2),
        f"{lang}.{'cer' if lang == 'ko' else 'wer'}": round(score(truth.text, hypothesis), 4),
        f"{lang}.language": transcript["language"],
        f"{lang}.language_probability": transcript["language_probability"],
        f"{lang}.language_source": transcript["language_source"],
        f"{lang}.speakers_found": len({t["speaker"] for t in turns}),
        f"{lang}.speakers_true": len({t.speaker for t in truth.turns}),
        f"{lang}.turns_found": len(turns),
        f"{lang}.turns_true": len(truth.turns),
        f"{lang}.turn_boundary_err_mean_s": round(sum(err) / len(err), 3) if err else None,
        f"{lang}.rejected_segments": sum(metrics["rejected_segments"].values()),
        f"{lang}.subtitle_cues": metrics["subtitle_cues"],
        f"{lang}.subtitle_reading_speed_over": metrics["subtitle_reading_speed_over"],
    }


def _korean_voice_detection(out: Path, model_spec: str) -> dict:
    """Detected language for each espeak-ng Korean voice reading the same two sentences alone."""
    from prism.audio.speech import SR, load_asr, resolve_model
    from prism.audio.synth import KOREAN_LINES
    from prism.media import decode_audio

    model, _ = load_asr(str(resolve_model(model_spec).path), "cpu", "int8", 0)
    if not model.model.is_multilingual:
        return {}
    text = " ".join(t for _, t in KOREAN_LINES[:2])
    result = {}
    for voice in KOREAN_PROBE_VOICES:
        wav = out / f"probe_{voice.replace('+', '_')}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
        lang, prob, probs = model.detect_language(audio=decode_audio(wav, 0, SR).samples)
        ko = dict(probs).get("ko", 0.0)
        result[f"ko_voice.{voice}"] = f"{lang} {prob:.2f} (ko {ko:.2f})"
    return result


def run(out_dir: str | Path, *, minutes: float = 1.5, batch_size: int = 0, device: str = "auto",
        model: str = "") -> dict:  # fmt: skip
    from prism.audio.synth import DEFAULT_LINES, build_dialogue, espeak_available
    from prism.media.tools import ffmpeg_exe
    from prism.runner import Runner

    if not espeak_available():  # GPU worker images carry no espeak-ng: say why, the other benchmarks run
        return {"skipped": "espeak-ng is not on PATH, so the spoken test input cannot be generated"}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repeat = max(1, round(minutes * 60 / 25))  # one pass of the four lines is about 25 s
    params = {"audio": {"batch_size": batch_size, "device": device, "model": model}}

    warm = out / "warm.mp4"
    build_dialogue(warm, lines=DEFAULT_LINES[:1])
    warm_title = Runner(out / "warm-out", params=params, force=True).run([warm], ["audio"])[0]
    manifest = json.loads((warm_title.title_dir / "manifest.json").read_text())["stages"]["audio"]
    result: dict = {
        "model": manifest["model"]["name"].split("+")[0],
        "device": manifest["metrics"]["asr_device"],
        "device_fallback": manifest["metrics"]["asr_device_fallback"],
        "compute_type": manifest["metrics"]["asr_compute_type"],
        "batch_size": manifest["metrics"]["asr_batch_size"],
        "cpu_count": os.cpu_count(),
    }
    for lang in ("en", "ko"):
        result.update(_dialogue(out, lang, params, repeat))
    result.update(_korean_voice_detection(out, model))

    tone = out / "tone.mkv"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=size=64x36:rate=10:d=10",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=48000:duration=10,volume=0.566337,pan=stereo|c0=c0|c1=c0",
            "-c:v",
            "libx264",
            "-c:a",
            "pcm_s24le",
            str(tone),
        ],
        check=True,
    )  # fmt: skip  (0.566337 * 1/8 = -23 dBFS peak: EBU Tech 3341 case 1)
    tone_title = Runner(out / "tone-out", params=params, force=True).run([tone], ["audio"])[0]
    tone_lufs = json.loads((tone_title.title_dir / "loudness.json").read_text())["tracks"][0]["integrated_lufs"]
    result["tone_integrated_lufs"] = tone_lufs
    result["tone_error_lu"] = round(abs(tone_lufs - (-23.0)), 3) if tone_lufs is not None else None
    return result


def markdown_section(result: dict, when: str) -> str:
    lines = [
        "### Audio",
        "",
        f"Measured {when} with `python benchmarks/audio.py --doc docs/benchmarks.md` "
        f"({result['cpu_count']} CPU cores, ASR {result['model']} on {result['device']}, {result['compute_type']}). "
        "Generated dialogues: two espeak-ng voices taking turns over a music bed and silence, English "
        "(en-us+m3 / en-us+belinda, WER) and Korean (ko+klatt / ko+klatt2, CER over Hangul without spaces). "
        "RTF = seconds of audio per second of stage time (higher is faster). espeak-ng's Korean is robotic: "
        "its CER says more about the synthetic voice than about Whisper on real Korean speech; the voice table "
        "shows which espeak-ng Korean voices the detector recognises as Korean at all. ko+klatt and ko+klatt2 "
        "are two variants of one espeak-ng voice (same pitch), the hardest speaker pair here. The 2-core machine "
        "may be shared with other jobs while this runs: RTF is then a lower bound.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in result.items() if not isinstance(v, (dict, list))]
    return "\n".join(lines) + "\n"


def write_doc(doc: Path, section: str) -> None:
    """Replace the ``### Audio`` section (up to the next ``### ``) and leave the rest as it is."""
    text = doc.read_text() if doc.exists() else ""
    pattern = re.compile(r"### Audio\n.*?(?=\n### |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def main(argv: list[str] | None = None) -> None:
    from datetime import UTC, datetime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".bench/audio")  # .bench/ is git-ignored
    parser.add_argument("--minutes", type=float, default=1.5, help="audio per language")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = auto (1 on CPU, 16 on GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--model", default="", help="ASR model name or CTranslate2 dir; default $PRISM_ASR_MODEL or base"
    )
    parser.add_argument("--doc", type=Path, help="rewrite the ### Audio section of this Markdown file")
    parser.add_argument(
        "--render", type=Path, help="only re-render --doc from an earlier result JSON (this script's output)"
    )
    args = parser.parse_args(argv)
    if args.render and args.doc:
        saved = json.loads(args.render.read_text())
        write_doc(args.doc, markdown_section(saved["result"], saved["when"]))
        return
    result = run(args.out, minutes=args.minutes, batch_size=args.batch_size, device=args.device, model=args.model)
    if "skipped" in result:
        print(f"audio stage: skipped: {result['skipped']}")
        return
    when = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result, indent=2))
    Path(args.out, "result.json").write_text(json.dumps({"when": when, "result": result}, indent=2))
    if args.doc:
        write_doc(args.doc, markdown_section(result, when))


if __name__ == "__main__":
    main()
