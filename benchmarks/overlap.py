"""Stage concurrency on one worker: a title's stages run one after another, then with the audio
stage beside the visual ones (prism/schedule.py), on a generated title with spoken dialogue.

Prints, per mode: wall time, each stage's time, CPU-seconds and peak RSS; in the sequential run
also each stage's own CPU-seconds (the profile the cloud job sizes in cdk/config.py come from).
Each run happens in a child process, so peak memory and CPU time are the run's own.

    python -m benchmarks.overlap [--seconds 90] [--size 1280x720] [--out .bench/overlap]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.core import cpu_seconds, ensure_input, peak_rss_mib

STAGES = ["shots", "keyframes", "cues", "audio"]


def build_input(out: Path, seconds: float, width: int, height: int) -> Path:
    """The benchmark's generated video with a two-voice espeak-ng dialogue as its audio track."""
    from prism.media.tools import ffmpeg_exe
    from testkit.audio_synth import build_dialogue, espeak_available

    target = out / f"overlap_{width}x{height}_{int(seconds)}s.mp4"
    if target.exists():
        return target
    if not espeak_available():
        raise SystemExit("espeak-ng is not on PATH: the spoken audio track cannot be generated")
    video, _ = ensure_input(out / "inputs", seconds, width, height)
    speech = out / "dialogue.mp4"
    build_dialogue(speech, repeat=max(1, round(seconds / 25)))
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-i", str(video), "-i", str(speech), "-map", "0:v", "-map", "1:a",
         "-c", "copy", "-t", str(seconds), str(target)],
        check=True,
    )  # fmt: skip
    return target


class _StageCpu:
    """Runner events that take each stage's CPU-seconds (exact only when stages run one at a time)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def stage_started(self, title_id: str, stage: str) -> None:
        self.started[stage] = cpu_seconds()

    def stage_progress(self, *args) -> None:
        pass

    def stage_finished(self, title_id: str, outcome) -> None:
        if outcome.stage in self.started:
            self.cpu[outcome.stage] = round(cpu_seconds() - self.started.pop(outcome.stage), 1)


def _child(source: str, out: str, overlap: str) -> None:
    from prism.runner import Runner

    events = _StageCpu()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    [title] = Runner(out, force=True, overlap=overlap == "1", events=events).run([Path(source)], STAGES)
    wall = time.perf_counter() - t0
    print(json.dumps({
        "status": title.status,
        "reason": title.reason,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu_seconds() - cpu0, 1),
        "peak_rss_mib": peak_rss_mib(),
        "stage_s": {s.stage: round(s.duration_s, 2) for s in title.stages},
        "stage_cpu_s": events.cpu if overlap != "1" else None,
    }))  # fmt: skip


def run(out: Path, *, seconds: float = 90.0, width: int = 1280, height: int = 720) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    source = build_input(out, seconds, width, height)
    result: dict = {"input": {"seconds": seconds, "size": f"{width}x{height}", "cores": os.cpu_count()}}
    for mode, flag in (("sequential", "0"), ("overlapped", "1")):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.overlap", "--child", str(source), str(out / f"run-{mode}"), flag],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["overlap_speedup"] = round(result["sequential"]["wall_s"] / result["overlapped"]["wall_s"], 2)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(*argv[1:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--out", type=Path, default=Path(".bench/overlap"))
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    print(json.dumps(run(args.out, seconds=args.seconds, width=width, height=height), indent=2))


if __name__ == "__main__":
    main()
