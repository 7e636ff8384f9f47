"""Embeddings benchmark: keyframes embedded per second, and shot-search latency.

    python benchmarks/embeddings.py [--keyframes 48] [--batch-size 0] [--device auto] [--dtype auto]
                                    [--workers 0] [--search-vectors 200000] [--dim 512] [--out DIR]

Model: ``$PRISM_EMBEDDINGS_MODEL`` when set (a real local model directory); otherwise a CLIP
with the shapes of openai/clip-vit-base-patch32 and RANDOM weights, built from its config (same
compute per image as the real one, meaningless vectors) and saved as a model directory. The
timing runs the stage's own code path (``embed_keyframes``: its device, dtype, batch size and
decode workers, 0 = the stage's defaults) over generated 1280x720 JPEGs read from disk. Search uses random unit vectors with a low intrinsic
dimension, as image embeddings have, and reports recall@10 of HNSW against exact search.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_keyframes(directory: Path, count: int, size: tuple[int, int] = (1280, 720)) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    paths = []
    for i in range(count):
        base = (ramp * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        path = directory / f"{i:05d}.jpg"
        Image.fromarray(base).save(path, quality=90)
        paths.append(path)
    return paths


def bench_embed(
    out_dir: Path,
    keyframes: int = 48,
    batch_size: int = 0,
    device: str = "auto",
    *,
    dtype: str = "auto",
    workers: int = 0,
    preset: str = "vit-b-32",
) -> dict[str, Any]:
    import torch

    from prism.stages.embeddings import (
        MODEL_ENV,
        EmbeddingsParams,
        embed_keyframes,
        model_location,
        resolve_model_dir,
    )
    from testkit.random_clip import save_random_clip

    params = EmbeddingsParams(device=device, dtype=dtype, batch_size=batch_size, workers=workers)
    if os.environ.get(MODEL_ENV):
        model_dir = resolve_model_dir(model_location())
        model = None
    else:
        model_dir = out_dir / f"random-clip-{preset}"
        if not (model_dir / "config.json").exists():
            save_random_clip(model_dir, preset)
        model = f"CLIP {preset} shapes, RANDOM weights (config-built)"
    paths = make_keyframes(out_dir / "keyframes", keyframes)
    embed_keyframes(paths[:8], params, model_dir)  # loads the model; warms the device
    t0 = time.perf_counter()
    vectors, encoder, used = embed_keyframes(paths, params, model_dir)
    elapsed = time.perf_counter() - t0
    costs = preprocess_costs(encoder, paths[:16])
    return {
        "model": model or f"{encoder.info.name} ({encoder.info.version})",
        "device": used.device,
        "dtype": str(encoder.model.dtype).removeprefix("torch."),
        "batch_size": used.batch_size,
        "workers": used.workers,
        "preprocess": "torch on the device" if encoder.transform is not None else "processor (CPU)",
        "torch_threads": torch.get_num_threads(),
        "keyframes": len(paths),
        "dim": int(vectors.shape[1]),
        "seconds": round(elapsed, 2),
        "keyframes_per_s": round(len(paths) / elapsed, 2),
        **costs,
        # what one decode thread per core could feed a GPU that preprocesses on the device
        "decode_bound_keyframes_per_s_per_core": round(1000 / costs["decode_ms_per_keyframe"], 1),
    }


def preprocess_costs(encoder: Any, paths: list[Path]) -> dict[str, float]:
    """CPU milliseconds per keyframe, one thread: the JPEG decode (on the CPU on every device),
    the stage's tensor preprocessing on this device, and transformers' processor (the old path)."""
    import torch

    def per_keyframe_ms(fn) -> float:
        start = time.process_time()
        fn()
        if encoder.device.startswith("cuda"):
            torch.cuda.synchronize()
        return round(1000 * (time.process_time() - start) / len(paths), 2)

    arrays: list[np.ndarray] = []
    result = {"decode_ms_per_keyframe": per_keyframe_ms(lambda: arrays.extend(encoder.load_pixels(p) for p in paths))}
    if encoder.transform is not None:
        result["preprocess_ms_per_keyframe"] = per_keyframe_ms(lambda: encoder.pixel_values(arrays))
    result["processor_ms_per_keyframe"] = per_keyframe_ms(lambda: encoder.processor(images=arrays, return_tensors="pt"))
    return result


def structured_vectors(n: int, dim: int, latent: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors with ``latent``-dimensional structure plus noise, and a projection for queries.

    Image embeddings have a low intrinsic dimension; uniform random vectors in 512-d have no
    near neighbours at all and are the worst case of every approximate index.
    """
    rng = np.random.default_rng(seed)
    project = rng.standard_normal((latent, dim), dtype=np.float32)
    z = rng.standard_normal((n, latent), dtype=np.float32)
    x = z @ project + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), z @ project


def bench_search(n: int = 200_000, dim: int = 512, queries: int = 200) -> dict[str, Any]:
    """Build time, per-query latency (ShotIndex.search, one query at a time) and recall@10."""
    import faiss
    import pyarrow as pa

    from prism.search import SHOTS_SCHEMA, IndexOptions, ShotIndex, new_index
    from prism.stages.base import ModelInfo

    x, clean = structured_vectors(n, dim)
    rng = np.random.default_rng(1)
    q = clean[rng.integers(0, n, queries)] + 0.3 * rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    shots = pa.table({"title_id": ["t"] * n, "shot_index": np.arange(n, dtype=np.int32), "start_s": np.zeros(n),
                      "end_s": np.zeros(n), "keyframe": [None] * n}, schema=SHOTS_SCHEMA)  # fmt: skip
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(q, 10)
    report: dict[str, Any] = {"vectors": n, "dim": dim, "faiss_threads": faiss.omp_get_max_threads()}
    for kind, options in (("exact", IndexOptions(exact_max=n)), ("hnsw", IndexOptions(exact_max=0))):
        t0 = time.perf_counter()
        index = new_index(dim, n, options)
        index.add(x)
        build = time.perf_counter() - t0
        shot_index = ShotIndex(index, shots, ModelInfo("bench", "0"), [], options)
        latencies = []
        found = []
        for v in q:
            t0 = time.perf_counter()
            hits = shot_index.search(v, 10)
            latencies.append(time.perf_counter() - t0)
            found.append({h.shot.shot_index for h in hits})
        recall = float(np.mean([len(f & set(t)) / 10 for f, t in zip(found, truth)]))
        report[kind] = {
            "build_s": round(build, 2),
            "ms_per_query_p50": round(1000 * float(np.median(latencies)), 3),
            "ms_per_query_p95": round(1000 * float(np.percentile(latencies, 95)), 3),
            "recall_at_10": round(recall, 4),
            "options": dataclasses.asdict(options),
        }
    return report


def run(out_dir: str | Path, *, keyframes: int = 48, batch_size: int = 0, device: str = "auto",
        search_vectors: int = 200_000, dim: int = 512, dtype: str = "auto", workers: int = 0,
        preset: str = "vit-b-32") -> dict[str, Any]:  # fmt: skip
    """Both benchmarks; ``search_vectors=0`` skips search."""
    out_dir = Path(out_dir)
    embed = bench_embed(out_dir, keyframes, batch_size, device, dtype=dtype, workers=workers, preset=preset)
    result: dict[str, Any] = {"embed": embed}
    if search_vectors:
        result["search"] = bench_search(search_vectors, dim)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keyframes", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=0, help="0 = the stage's default (16 CPU, 128 GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto = the stage's (float16 on CUDA, float32 on CPU)")
    parser.add_argument("--workers", type=int, default=0, help="JPEG decode threads; 0 = one per core")
    parser.add_argument("--search-vectors", type=int, default=200_000, help="0 skips the search benchmark")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.out or Path(tmp), keyframes=args.keyframes, batch_size=args.batch_size, device=args.device,
                     search_vectors=args.search_vectors, dim=args.dim, dtype=args.dtype, workers=args.workers)  # fmt: skip
    e = result["embed"]
    print(f"embed: {e['keyframes_per_s']} keyframes/s on {e['device']} ({e['dtype']}, {e['torch_threads']} threads), "
          f"model {e['model']}, batch size {e['batch_size']}, {e['workers']} decode workers, "
          f"preprocessing: {e['preprocess']}, {e['keyframes']} keyframes of 1280x720")  # fmt: skip
    if "search" in result:
        s = result["search"]
        for kind in ("exact", "hnsw"):
            r = s[kind]
            print(
                f"search {kind}: {s['vectors']} x {s['dim']}-d, build {r['build_s']} s, "
                f"{r['ms_per_query_p50']} ms/query p50 ({r['ms_per_query_p95']} p95), recall@10 {r['recall_at_10']}"
            )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
