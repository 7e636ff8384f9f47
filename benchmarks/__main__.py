"""One command for every benchmark: generates its inputs, runs Prism and its peers, writes JSON + Markdown.

python -m benchmarks                 # full run (minutes), writes .bench/results.json and docs/benchmarks.md
python -m benchmarks --quick         # tiny inputs, seconds: checks the code, numbers mean nothing
python -m benchmarks --device        # on the accelerator (same as --device cuda); fails at once without one
python -m benchmarks --device cpu    # any stage device: auto (default) | cpu | cuda | cuda:N
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import e2e, shots
from benchmarks.core import ensure_input


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run_all(out: Path, *, quick: bool, device: str) -> dict:
    from benchmarks import audio, embeddings

    out.mkdir(parents=True, exist_ok=True)
    size = (160, 90) if quick else (640, 360)
    results: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "quick": quick}
    results["shots_quality"] = shots.run_quality(
        out / "shots", width=size[0], height=size[1], device=device, quick=quick
    )
    speed_size, speed_s = ((320, 180), 8.0) if quick else ((1920, 1080), 60.0)
    path, frames = ensure_input(out / "inputs", speed_s, *speed_size)
    results["shots_speed"] = {
        "size": f"{speed_size[0]}x{speed_size[1]}",
        **shots.run_speed(path, frames, out / "shots-speed", device),
    }
    results["audio"] = audio.run(out / "audio", minutes=0.2 if quick else 2.0, device=device)
    results["embeddings"] = embeddings.run(
        out / "embeddings",
        keyframes=8 if quick else 64,
        device=device,
        search_vectors=2_000 if quick else 200_000,
        preset="tiny" if quick else "vit-b-32",
    )
    e2e_size, e2e_s = ((320, 180), 8.0) if quick else ((1920, 1080), 600.0)
    results["end_to_end"] = e2e.run(out / "e2e", duration_s=e2e_s, width=e2e_size[0], height=e2e_size[1], device=device)
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Measured {r['when']} on {m['cores']} CPU cores ({m['cpu']}), {m['memory_gib']} GiB, GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']} with {m['torch_threads']} threads."
        + (" QUICK MODE: tiny inputs, not meaningful." if r["quick"] else ""),
        "",
        f"### Shot detection quality ({r['shots_quality']['size']}, ±{r['shots_quality']['tolerance_frames']} frames, 1-to-1 matching)",
        "",
        "| method | precision | recall | F1 | recall (cuts) | recall (gradual) | false positives | misses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, s in r["shots_quality"]["overall"].items():
        lines.append(
            f"| {method} | {s['precision']} | {s['recall']} | {s['f1']} | {s['recall_cut']} | {s['recall_gradual']} | {s['false_positives']} | {s['misses']} |"
        )
    lines += [
        "",
        "Per generated title (F1 / false positives):",
        "",
        "| title | transitions | " + " | ".join(shots.METHODS) + " |",
        "|---" * (2 + len(shots.METHODS)) + "|",
    ]
    for name, t in r["shots_quality"]["per_title"].items():
        lines.append(
            f"| {name} | {t['transitions']} | "
            + " | ".join(f"{t[m]['f1']} / {t[m]['false_positives']}" for m in shots.METHODS)
            + " |"
        )
    sp = r["shots_speed"]
    lines += [
        "",
        f"### Shot detection speed ({sp['size']}, {sp['frames']} frames, Prism on {sp['device']})",
        "",
        "| what | frames/s |",
        "|---|---|",
        f"| ffmpeg decode-only to 48x27 (the floor) | {sp['decode_only_fps']} |",
    ]
    if "visual_pass_fps" in sp:
        lines.append(
            f"| Prism visual pass alone (the one decode feeding shots, keyframes, cues) | {sp['visual_pass_fps']} |"
        )
    lines += [f"| {m} | {sp[f'{m}_fps']} |" for m in shots.METHODS]
    if "visual_pass_fps" in sp:
        lines += [
            "",
            (
                f"Visual pass / decode-only: {sp['visual_pass_vs_decode_only']} by wall time, "
                f"{sp['visual_pass_vs_decode_only_cpu']} by CPU seconds (1.0 = the pass costs no more than the floor)."
            ),
        ]
    a = r["audio"]
    lines += ["", "### Audio", ""]
    if "skipped" in a:
        lines += [f"Skipped: {a['skipped']}"]
    else:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in a.items() if not isinstance(v, (dict, list))]
    em = r["embeddings"]
    lines += ["", "### Embeddings", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _flatten(em).items()]
    e = r["end_to_end"]
    lines += [
        "",
        f"### End to end: `prism run` on a generated {e['input']['duration_s'] / 60:.0f}-minute {e['input']['size']} title",
        "",
        "| stage | status | seconds | of which shared decode |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {s['status']} | {s['seconds']} | {', '.join(f'{k} {v} s' for k, v in s['shared_decode_s'].items())} |"
        for name, s in e["stages"].items()
    ]
    lines += [
        "",
        f"Wall time {e['wall_s']} s; decode-only {e['decode_only_s']} s; ratio {e['end_to_end_vs_decode_only']}x; "
        f"peak RSS of the `prism run` process {e['peak_rss_mib']} MiB (VmHWM; ffmpeg children not included); "
        f"projected 2-hour title on this machine: {e['projected_2h_s'] / 60:.0f} min.",
    ]
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            flat[f"{prefix}{k}"] = v
    return flat


DOC_HEADER = """# Benchmarks

Generated by `python -m benchmarks` (inputs are generated, nothing is downloaded). Reproduce:

```bash
bash scripts/setup.sh && .venv/bin/python -m benchmarks --doc docs/benchmarks.md && cp .bench/results.json benchmarks/results/latest.json
```

PySceneDetect runs with its defaults (`AdaptiveDetector()`, `ContentDetector()`, OpenCV backend)
on the same files in the same run. GPU numbers: run the same command on a GPU machine (the
first line of the results names the GPU, if any). Inputs are generated with x264 `ultrafast`
plus film grain, so they are high-bitrate (about 50 Mbit/s at 1080p) and slower to decode than
typical delivered masters: the decode floor below is a conservative one.

Reading the numbers: on a CPU, TransNetV2 inference, not decoding, bounds the shots stage; on a
GPU the model is far faster than decoding, and the single visual pass (one decode feeding
shots, keyframes and cues) becomes the bound. The 2-hour projection scales this machine's wall
time linearly; it is not a GPU measurement. The embeddings model here has random weights
(only its speed means anything), and search vectors are synthetic.

"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Prism benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny inputs: checks the code, numbers mean nothing")
    parser.add_argument(
        "--device", nargs="?", const="cuda", default="auto",
        help="auto (default) | cpu | cuda | cuda:N; --device alone means the accelerator (cuda)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(".bench"))
    parser.add_argument("--doc", type=Path, help="also write the Markdown results document here")
    parser.add_argument("--render", type=Path, help="only re-render the Markdown from an earlier results.json")
    return parser.parse_args(argv)


def check_device(device: str) -> None:
    """Fail before minutes of input generation when the asked-for accelerator is missing."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks: device {device!r} asked for, but torch {torch.__version__} sees no CUDA device")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        check_device(args.device)
        results = run_all(args.out, quick=args.quick, device=args.device)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    if args.doc:
        args.doc.write_text(DOC_HEADER + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
