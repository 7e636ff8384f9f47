"""``embeddings``: an image-text vector per keyframe and per shot, for search and grouping.

The encoder is any CLIP- or SigLIP-family model ``transformers`` can load with
``AutoModel``/``AutoProcessor`` and that has ``get_image_features``/``get_text_features``.
It is configuration, never downloaded: the ``model`` parameter (or ``PRISM_EMBEDDINGS_MODEL``)
names a local directory or a model id already in the Hugging Face cache. Without one the stage
ends ``skipped`` with a reason saying how to provide it; it never invents vectors.

Every vector is L2-normalized float32, so a dot product is a cosine similarity. A shot's vector
is the normalized mean of its keyframes' vectors; a shot without keyframes has no row.

Keyframes are decoded once, to uint8 arrays, by one thread per core; the processor's image
preprocessing (resize, center crop, rescale, normalize) then runs as batched torch ops on the
model's device (the GPU on CUDA, so the CPU only decodes JPEGs). ``ImageTransform`` reproduces the
processor's configuration; a processor it does not cover is called as it is.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from prism.devices import check_device, resolve_device
from prism.errors import ConfigError, ModelUnavailable
from prism.stages.base import ModelInfo, Output, Stage, StageContext, StageResult, register

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

MODEL_ENV = "PRISM_EMBEDDINGS_MODEL"
ARTIFACT = "embeddings.parquet"
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
HOW_TO_PROVIDE = (
    "no image-text model for the embeddings stage: pass `--param embeddings.model=DIR` or set "
    f"{MODEL_ENV}=DIR, where DIR is a local directory saved with transformers' save_pretrained "
    "(config.json, model.safetensors, plus the processor files: preprocessor_config.json or "
    "processor_config.json, and tokenizer files), e.g. a CLIP or SigLIP model; a model id such as "
    "google/siglip-base-patch16-224 also works once it is in the local Hugging Face cache "
    "(weights are never downloaded at run time)"
)


@dataclass(frozen=True)
class EmbeddingsParams:
    model: str = ""  # local directory or cached model id; "" = $PRISM_EMBEDDINGS_MODEL
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16
    batch_size: int = 0  # keyframes per forward pass; 0 = auto (16 on CPU, 128 on GPU)
    workers: int = 0  # threads decoding JPEGs ahead of the model; 0 = one per core

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if self.batch_size < 0 or self.workers < 0:
            raise ValueError("batch_size and workers must be >= 0 (0 = auto)")


def model_location(param: str = "") -> str:
    """The configured model: the parameter, else the environment variable, else ''."""
    return (param or os.environ.get(MODEL_ENV, "")).strip()


def resolve_model_dir(location: str) -> Path:
    """A local directory holding the model, or ``ModelUnavailable`` saying how to provide one."""
    if not location:
        raise ModelUnavailable(HOW_TO_PROVIDE)
    if location.startswith("s3://"):
        raise ModelUnavailable(
            f"model location {location} is in S3; the cloud worker syncs it to a local directory. "
            f"Locally, download it yourself and pass the directory ({MODEL_ENV}=DIR or --param embeddings.model=DIR)"
        )
    path = Path(location).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"model directory {path} has no config.json; {HOW_TO_PROVIDE}")
        if not _weight_files(path):
            raise ModelUnavailable(f"model directory {path} has no weights (*.safetensors or *.bin); {HOW_TO_PROVIDE}")
        return path
    if path.is_absolute() or location.startswith((".", "~")) or location.count("/") > 1:
        raise ModelUnavailable(f"model directory {location} does not exist; {HOW_TO_PROVIDE}")
    try:  # a model id: only what is already in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(location, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, or an invalid id
        raise ModelUnavailable(
            f"model {location!r} is neither a local directory nor in the Hugging Face cache "
            f"({type(exc).__name__}); {HOW_TO_PROVIDE}"
        ) from exc


def _weight_files(path: Path) -> list[Path]:
    return sorted({f for pattern in WEIGHT_FILES for f in path.glob(pattern)})


def model_identity(path: Path) -> ModelInfo:
    """Name and revision of a model directory: the Hub id and commit for a cache snapshot,
    else the directory name and a hash of the weights (so a swapped model never looks up to date)."""
    path = path.resolve()
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in _weight_files(path))
    return _identity(path, stamp)


@functools.lru_cache(maxsize=8)
def _identity(path: Path, stamp: tuple) -> ModelInfo:
    parts = path.parts
    if len(parts) >= 4 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return ModelInfo(parts[-3].removeprefix("models--").replace("--", "/"), parts[-1])
    digest = hashlib.sha256()
    for f in _weight_files(path):
        with open(f, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return ModelInfo(path.name, f"weights-sha256:{digest.hexdigest()[:16]}")


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return dtype


def resolve_workers(workers: int) -> int:
    return workers or os.cpu_count() or 1


_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's resample codes, as processors store them


@dataclass(frozen=True)
class ImageTransform:
    """A processor's image preprocessing as batched torch ops on any device.

    Same steps and sizes as the transformers image processor (PIL or torchvision backend): resize
    (shortest edge, or a fixed height x width) with an antialiased bicubic/bilinear filter whose
    result is rounded to uint8 as PIL's is, center crop, rescale, normalize.
    """

    shortest_edge: int | None
    size: tuple[int, int] | None  # (height, width) when the processor resizes to a fixed size
    resample: str
    crop: tuple[int, int] | None
    scale: float  # 1.0 when the processor does not rescale
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_processor(cls, processor: Any) -> ImageTransform | None:
        """The transform of ``processor``'s image processor, or None where it does something else."""
        ip = getattr(processor, "image_processor", processor)
        size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
        resample = getattr(ip, "resample", None)
        resample = _RESAMPLE.get(int(resample)) if resample is not None else None
        if not getattr(ip, "do_resize", False) or resample is None or getattr(ip, "do_pad", False):
            return None
        shortest, height, width = (_size_field(size, k) for k in ("shortest_edge", "height", "width"))
        others = [_size_field(size, k) for k in ("longest_edge", "max_height", "max_width", "min_pixels", "max_pixels")]
        if any(others) or not (shortest or (height and width)):
            return None
        do_crop = bool(getattr(ip, "do_center_crop", False))
        crop_hw = (_size_field(crop, "height"), _size_field(crop, "width")) if do_crop else None
        if crop_hw is not None and not all(crop_hw):
            return None
        normalize = bool(getattr(ip, "do_normalize", False))
        mean, std = (getattr(ip, "image_mean", None), getattr(ip, "image_std", None)) if normalize else (None, None)
        if normalize and (mean is None or std is None):
            return None
        return cls(
            shortest_edge=None if (height and width) else int(shortest),
            size=(int(height), int(width)) if (height and width) else None,
            resample=resample,
            crop=crop_hw,
            scale=float(getattr(ip, "rescale_factor", 1 / 255)) if getattr(ip, "do_rescale", False) else 1.0,
            mean=_triple(mean) if normalize else None,
            std=_triple(std) if normalize else None,
        )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Resized (height, width), as transformers computes it (the long edge is truncated)."""
        if self.size is not None:
            return self.size
        side = self.shortest_edge or 0
        if width <= height:
            return int(side * height / width), side
        return side, int(side * width / height)

    def __call__(self, images: Sequence[np.ndarray], device: str, dtype: Any) -> Any:
        """(N, 3, H, W) pixel values in ``dtype`` on ``device`` from (h, w, 3) uint8 arrays.
        Images of one size (a title's keyframes) are resized in one call."""
        import torch

        out: list[Any] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for shape, members in groups.items():
            batch = torch.from_numpy(np.stack([images[i] for i in members]))
            if device.startswith("cuda"):
                batch = batch.pin_memory()
            x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
            x = self._pixels(x, shape[0], shape[1])
            for k, i in enumerate(members):
                out[i] = x[k]
        return torch.stack(out).to(dtype)

    def _pixels(self, x: Any, height: int, width: int) -> Any:
        """uint8 (N, 3, H, W) in, float32 pixel values out."""
        import torch
        import torch.nn.functional as F

        out_h, out_w = self.output_size(height, width)
        resize: dict[str, Any] = {"mode": self.resample, "antialias": True, "align_corners": False}
        if (out_h, out_w) == (height, width):
            x = x.float()
        elif x.device.type == "cpu":  # torch's uint8 kernel is PIL's algorithm (and several times faster)
            x = F.interpolate(x, size=(out_h, out_w), **resize).float()
        else:  # in float on the GPU, rounded to uint8 after each pass as PIL does (horizontal first)
            x = x.float()
            if out_w != width:
                x = F.interpolate(x, size=(height, out_w), **resize).round_().clamp_(0, 255)
            if out_h != height:
                x = F.interpolate(x, size=(out_h, out_w), **resize).round_().clamp_(0, 255)
        if self.crop is not None:
            x = _center_crop(x, *self.crop)
        x = x * self.scale
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x


def _size_field(size: Any, key: str) -> Any:
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _triple(values: Any) -> tuple[float, ...]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return tuple(values * 3 if len(values) == 1 else values)


def _center_crop(x: Any, crop_h: int, crop_w: int) -> Any:
    """transformers' center crop: pads with zeros when the crop is larger, then takes the middle."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if crop_h > h or crop_w > w:
        pad_w, pad_h = max(crop_w - w, 0), max(crop_h - h, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = x.shape[-2:]
    top, left = int((h - crop_h) / 2.0), int((w - crop_w) / 2.0)
    return x[..., top : top + crop_h, left : left + crop_w]


class ImageTextEncoder:
    """A loaded image-text model: images and texts in, L2-normalized float32 vectors out."""

    def __init__(self, model: Any, processor: Any, info: ModelInfo, device: str = "cpu"):
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelUnavailable(
                f"{info.name} is a {type(model).__name__}, not an image-text model with "
                "get_image_features/get_text_features (use a CLIP- or SigLIP-family model)"
            )
        self.model = model.to(device).eval()
        self.processor = processor
        self.transform = ImageTransform.from_processor(processor)
        self.info = info
        self.device = device
        # SigLIP was trained on texts padded to the full length; CLIP pools at the EOS token.
        self._text_padding = "max_length" if "siglip" in model.config.model_type else True
        self._draft_side = 2 * _input_side(model.config)
        text_config = getattr(model.config, "text_config", None)
        self._max_text = int(getattr(text_config, "max_position_embeddings", 0) or 64)

    @classmethod
    def load(cls, path: Path, device: str = "cpu", dtype: str = "float32") -> ImageTextEncoder:
        """Load a saved model directory, never touching the network."""
        import torch
        from transformers import AutoModel, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailable(f"cannot load an image-text model from {path}: {exc}; {HOW_TO_PROVIDE}") from exc
        return cls(model, processor, model_identity(Path(path)), device)

    @functools.cached_property
    def dim(self) -> int:
        return int(self.encode_images([_blank()]).shape[1])

    def load_image(self, path: str | Path) -> Image.Image:
        """Decode an image as RGB; JPEGs are decoded at a reduced scale still twice the model's input."""
        from PIL import Image

        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (self._draft_side, self._draft_side))
            return img.convert("RGB")

    def load_pixels(self, path: str | Path) -> np.ndarray:
        """``load_image`` as an (h, w, 3) uint8 array: the one decode of a keyframe (threads: PIL drops the GIL)."""
        return np.asarray(self.load_image(path))

    def pixel_values(self, images: Sequence[Image.Image | np.ndarray]) -> Any:
        """The model's input for ``images``, on its device and in its dtype."""
        arrays = [np.asarray(image.convert("RGB") if hasattr(image, "convert") else image) for image in images]
        if self.transform is not None:
            return self.transform(arrays, self.device, self.model.dtype)
        inputs = self.processor(images=arrays, return_tensors="pt")
        return inputs["pixel_values"].to(self.device, dtype=self.model.dtype)

    def encode_images(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """One forward pass over ``images`` (one batch)."""
        import torch

        pixels = self.pixel_values(images)
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values=pixels)
        return _normalized(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        inputs = self.processor(
            text=list(texts),
            padding=self._text_padding,
            truncation=True,
            max_length=self._max_text,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            features = self.model.get_text_features(**inputs)
        return _normalized(features)

    def embed_files(
        self,
        paths: Sequence[str | Path],
        batch_size: int,
        *,
        workers: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Vectors of image files, ``batch_size`` at a time, decoding the next batch while one runs
        (``workers`` decode threads, 0 = one per core)."""
        if not paths:
            return np.zeros((0, self.dim), np.float32)
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        out: list[np.ndarray] = []
        done = 0
        with ThreadPoolExecutor(resolve_workers(workers)) as pool:
            ahead = [pool.submit(self.load_pixels, p) for p in batches[0]]
            for k in range(len(batches)):
                current = ahead
                ahead = [pool.submit(self.load_pixels, p) for p in batches[k + 1]] if k + 1 < len(batches) else []
                out.append(self.encode_images([f.result() for f in current]))
                done += len(current)
                if progress:
                    progress(done, len(paths))
        return np.concatenate(out)


def _input_side(config: Any) -> int:
    vision = getattr(config, "vision_config", None)
    return int(getattr(vision, "image_size", 0) or 224)


def _blank() -> Image.Image:
    from PIL import Image

    return Image.new("RGB", (64, 64))


def _normalized(features: Any) -> np.ndarray:
    if not hasattr(features, "float"):  # transformers 5 returns a ModelOutput; 4.x a tensor
        features = features.pooler_output
    vectors = features.float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=2)
def load_encoder(path: Path, device: str = "cpu", dtype: str = "float32") -> ImageTextEncoder:
    """The encoder for a model directory, loaded once per process, device and dtype."""
    return ImageTextEncoder.load(path, device, dtype)


def encoder_for(location: str = "", device: str = "auto", dtype: str = "auto") -> ImageTextEncoder:
    """The configured encoder (``location`` or ``$PRISM_EMBEDDINGS_MODEL``); ``ModelUnavailable`` if none."""
    path = resolve_model_dir(model_location(location)).resolve()
    dev = resolve_device(device, "embeddings")
    return load_encoder(path, dev, resolve_dtype(dtype, dev))


@dataclass(frozen=True)
class EmbedRun:
    """What one embedding run used: the stage's metrics and the benchmark's report."""

    device: str
    dtype: str
    batch_size: int
    workers: int


def embed_keyframes(
    files: Sequence[str | Path],
    params: EmbeddingsParams,
    model_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, ImageTextEncoder, EmbedRun]:
    """Vectors of keyframe files with ``params``' device, dtype, batch size and workers: the stage's
    one code path, also what the benchmark times."""
    device = resolve_device(params.device, "embeddings")
    run = EmbedRun(
        device=device,
        dtype=resolve_dtype(params.dtype, device),
        batch_size=params.batch_size or (128 if device.startswith("cuda") else 16),
        workers=resolve_workers(params.workers),
    )
    encoder = load_encoder(model_dir.resolve(), device, run.dtype)
    vectors = encoder.embed_files(files, run.batch_size, workers=run.workers, progress=progress)
    return vectors, encoder, run


def shot_vectors(shot_index: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shots, normalized mean vector, keyframe count) of each shot among ``shot_index``."""
    shots, inverse, counts = np.unique(shot_index, return_inverse=True, return_counts=True)
    sums = np.zeros((len(shots), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return shots, (sums / np.maximum(norms, 1e-12)).astype(np.float32), counts


# As declared: ``vector`` is a list of float32 whose fixed size is the model's (``embeddings_schema``).
EMBEDDINGS_SCHEMA = pa.schema(
    [
        ("shot_index", pa.int32()),
        ("kind", pa.string()),
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("path", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("keyframes", pa.int32()),
        ("vector", pa.list_(pa.float32())),
        ("model", pa.string()),
        ("model_revision", pa.string()),
    ],
    metadata={"prism.artifact": "embeddings", "prism.artifact_version": "1"},
)


def embeddings_schema(dim: int, model: ModelInfo) -> pa.Schema:
    """The declared schema with the vector's size and the model that made it."""
    vector = EMBEDDINGS_SCHEMA.get_field_index("vector")
    schema = EMBEDDINGS_SCHEMA.set(vector, pa.field("vector", pa.list_(pa.float32(), dim)))
    return schema.with_metadata(
        {
            **{k.decode(): v.decode() for k, v in EMBEDDINGS_SCHEMA.metadata.items()},
            "prism.embedding_dim": str(dim),
            "prism.vector_dtype": "float32",
            "prism.vector_norm": "l2",
            "prism.model": model.name,
            "prism.model_revision": model.version,
        }
    )


def embeddings_table(keyframes: pa.Table, shots: pa.Table, vectors: np.ndarray, model: ModelInfo) -> pa.Table:
    """Rows for every keyframe and every shot with a keyframe, shot row first, in shot order."""
    kf = keyframes.to_pydict()
    spans = dict(zip(shots["shot_index"].to_pylist(), zip(shots["start_s"].to_pylist(), shots["end_s"].to_pylist())))
    shot_ids, shot_vecs, counts = shot_vectors(np.asarray(kf["shot_index"], np.int64), vectors)
    rows: list[dict[str, Any]] = []
    for s, vec, count in zip(shot_ids.tolist(), shot_vecs, counts.tolist()):
        start, end = spans.get(s, (None, None))
        rows.append(
            {"shot_index": s, "kind": "shot", "start_s": start, "end_s": end, "keyframes": count, "vector": vec}
        )
    for i, s in enumerate(kf["shot_index"]):
        start, end = spans.get(s, (None, None))
        rows.append(
            {
                "shot_index": s,
                "kind": "keyframe",
                "frame": kf["frame"][i],
                "time_s": kf["time_s"][i],
                "path": kf["path"][i],
                "start_s": start,
                "end_s": end,
                "keyframes": 1,
                "vector": vectors[i],
            }
        )
    rows.sort(key=lambda r: (r["shot_index"], r["kind"] != "shot", r.get("frame") or 0))
    dim = vectors.shape[1]
    flat = np.concatenate([r.pop("vector") for r in rows]).astype(np.float32) if rows else np.zeros(0, np.float32)
    columns: dict[str, Any] = {name: [r.get(name) for r in rows] for name in _SCALAR_COLUMNS}
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    columns["model"] = [model.name] * len(rows)
    columns["model_revision"] = [model.version] * len(rows)
    schema = embeddings_schema(dim, model)
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type) for f in schema], schema=schema)


_SCALAR_COLUMNS = ("shot_index", "kind", "frame", "time_s", "path", "start_s", "end_s", "keyframes")


def read_vectors(table: pa.Table, column: str = "vector") -> np.ndarray:
    """The vector column of an embeddings table as an (n, dim) float32 array, without copying rows one by one."""
    col = table[column].combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


@register
class EmbeddingsStage(Stage):
    name = "embeddings"
    requires = ("keyframes",)
    Params = EmbeddingsParams
    execution_params = frozenset({"device", "batch_size", "workers"})
    outputs = (Output(ARTIFACT, "parquet", EMBEDDINGS_SCHEMA, "image-text vectors of keyframes and shots"),)
    display_order = 50

    def _model_dir(self) -> Path:
        return resolve_model_dir(model_location(self.params.model))

    def model(self) -> ModelInfo:
        try:
            return model_identity(self._model_dir())
        except ModelUnavailable:
            return ModelInfo("none", "no model configured")

    def check_config(self) -> None:
        """No model configured is fine (the stage is skipped, saying how to provide one); a configured
        location that does not resolve is a configuration error."""
        location = model_location(self.params.model)
        if not location:
            return
        try:
            resolve_model_dir(location)
        except ModelUnavailable as exc:
            setting = f"embeddings.model={self.params.model!r}" if self.params.model else f"{MODEL_ENV}={location!r}"
            raise ConfigError(f"{setting}: {exc}") from exc

    def run(self, ctx: StageContext) -> StageResult:
        try:
            path = self._model_dir()
        except ModelUnavailable as exc:
            return StageResult(outputs=[], status="skipped", reason=str(exc))
        keyframes = ctx.read_table("keyframes.parquet")
        shots = ctx.read_table("shots.parquet")
        files = [ctx.title_dir / rel for rel in keyframes["path"].to_pylist()]
        vectors, encoder, used = embed_keyframes(
            files, self.params, path, progress=lambda d, t: ctx.progress(d, t, "embed")
        )
        table = embeddings_table(keyframes, shots, vectors, encoder.info)
        self.write_table(ctx, ARTIFACT, table)
        n_shots = table["kind"].to_pylist().count("shot")
        return StageResult(
            outputs=[ARTIFACT],
            metrics={
                "keyframes": len(files),
                "shots": n_shots,
                "dim": vectors.shape[1],
                "device": used.device,
                "dtype": used.dtype,
                "batch_size": used.batch_size,
            },
            summary=f"{len(files)} keyframe and {n_shots} shot vectors ({vectors.shape[1]}-d, {encoder.info.name})",
        )
