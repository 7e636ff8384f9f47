"""Benchmark the ``audio`` stage: real-time factor (seconds of audio per second of compute) plus quality.

Generates its own input (prism.audio.synth: two espeak-ng voices over music and silence,
repeated to about ``minutes`` of audio), runs the stage once to load the models, then times a
second, forced run through the Runner. Also reports WER, speaker turn boundary error and the EBU
reference tone's loudness error, so the speed is never quoted without the quality it came with.

    python benchmarks/audio.py [--minutes 1.5] [--batch-size 0] [--device auto] [--model DIR]

``run(out_dir, ...) -> dict`` is the entry point for a benchmarks package.
"""

from __future__ import annotations

import argparse
import json
import os

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))


def run(out_dir: str | Path, *, minutes: float = 1.5, batch_size: int = 0, device: str = "auto",
        model: str = "") -> dict:  # fmt: skip
    import pyarrow.parquet as pq

    from prism.audio.scoring import word_error_rate
    from prism.audio.synth import DEFAULT_LINES, build_dialogue
    from prism.media.tools import ffmpeg_exe
    from prism.runner import Runner

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repeat = max(1, round(minutes * 60 / 22))  # one pass of the four lines is about 22 s
    video = out / "bench_dialogue.mp4"
    truth = build_dialogue(video, lines=DEFAULT_LINES, repeat=repeat)
    params = {"audio": {"batch_size": batch_size, "device": device, "model": model}}

    warm = out / "warm.mp4"
    build_dialogue(warm, lines=DEFAULT_LINES[:1])
    Runner(out / "warm-out", params=params).run([warm], ["audio"])  # loads the models once

    t0 = time.perf_counter()
    title = Runner(out / "out", params=params, force=True).run([video], ["audio"])[0]
    wall = time.perf_counter() - t0
    stage = title.stages[0]
    if stage.status != "succeeded":
        raise RuntimeError(f"audio stage {stage.status}: {stage.reason}")
    tdir = title.title_dir
    manifest = json.loads((tdir / "manifest.json").read_text())["stages"]["audio"]
    transcript = json.loads((tdir / "transcript.json").read_text())
    turns = pq.read_table(tdir / "speakers.parquet").to_pylist()
    boundary_err = [
        max(abs(got["start_s"] - want.start_s), abs(got["end_s"] - want.end_s)) for want, got in zip(truth.turns, turns)
    ]

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
    tone_title = Runner(out / "tone-out", params=params).run([tone], ["audio"])[0]
    tone_lufs = json.loads((tone_title.title_dir / "loudness.json").read_text())["tracks"][0]["integrated_lufs"]

    metrics = manifest["metrics"]
    return {
        "audio_s": round(truth.duration_s, 2),
        "stage_s": round(stage.duration_s, 2),
        "wall_s": round(wall, 2),
        "rtf": round(truth.duration_s / stage.duration_s, 2),  # seconds of audio per second of compute
        "model": manifest["model"],
        "asr_model": transcript["model"],
        "device": metrics["asr_device"],
        "compute_type": metrics["asr_compute_type"],
        "batch_size": metrics["asr_batch_size"],
        "cpu_count": os.cpu_count(),
        "wer": round(word_error_rate(truth.text, " ".join(s["text"] for s in transcript["segments"])), 4),
        "speakers_found": len({t["speaker"] for t in turns}),
        "speakers_true": 2,
        "turns_found": len(turns),
        "turns_true": len(truth.turns),
        "turn_boundary_err_max_s": round(max(boundary_err), 3) if boundary_err else None,
        "turn_boundary_err_mean_s": round(sum(boundary_err) / len(boundary_err), 3) if boundary_err else None,
        "tone_integrated_lufs": tone_lufs,
        "tone_error_lu": round(abs(tone_lufs - (-23.0)), 3) if tone_lufs is not None else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".bench/audio")  # .bench/ is git-ignored
    parser.add_argument("--minutes", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=0, help="0 = auto (1 on CPU, 16 on GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="", help="CTranslate2 Whisper dir; default $PRISM_ASR_MODEL or tiny.en")
    args = parser.parse_args(argv)
    result = run(args.out, minutes=args.minutes, batch_size=args.batch_size, device=args.device, model=args.model)
    print(
        f"audio stage: RTF {result['rtf']}x real time ({result['audio_s']} s audio in {result['stage_s']} s) "
        f"model={result['asr_model']['name']} device={result['device']} compute={result['compute_type']} "
        f"batch_size={result['batch_size']}"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
