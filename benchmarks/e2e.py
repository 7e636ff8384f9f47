"""End to end: `prism run` on a generated 10-minute 1080p title, per stage, with peak memory.

The run happens in a child process so its peak RSS (and its ffmpeg children's) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.core import ensure_input, peak_rss_mib
from benchmarks.shots import decode_only_seconds


def _child(source: str, out: str, device: str = "auto") -> None:
    from prism.artifacts import read_manifest
    from prism.runner import Runner

    params = {stage: {"device": device} for stage in ("shots", "audio", "embeddings")}
    t0 = time.perf_counter()
    [outcome] = Runner(out, force=True, params=params).run([Path(source)])
    wall = time.perf_counter() - t0
    manifest = read_manifest(outcome.title_dir)
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "status": outcome.status,
                "stages": {
                    s.stage: {
                        "status": s.status,
                        "seconds": round(s.duration_s, 2),
                        "reason": s.reason,
                        # the title's shared decode, counted in the stage that happened to trigger it
                        "shared_decode_s": manifest["stages"][s.stage].get("metrics", {}).get("shared_decode_s", {}),
                    }
                    for s in outcome.stages
                },
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def run(out: Path, *, duration_s: float = 600.0, width: int = 1920, height: int = 1080, device: str = "auto") -> dict:
    path, frames = ensure_input(out / "inputs", duration_s, width, height)
    decode_s = decode_only_seconds(path, width=48, height=27)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e", str(path), str(out / "prism-e2e"), device],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(
        input={"duration_s": duration_s, "size": f"{width}x{height}", "frames": frames},
        decode_only_s=round(decode_s, 2),
        end_to_end_vs_decode_only=round(result["wall_s"] / decode_s, 2),
        projected_2h_s=round(result["wall_s"] * 7200.0 / duration_s, 0),
    )
    return result


if __name__ == "__main__":
    _child(*sys.argv[1:4])
