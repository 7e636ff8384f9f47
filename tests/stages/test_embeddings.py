"""The embeddings stage. No real weights exist on this machine, so every model here is a CLIP
with RANDOM weights built from a config: it checks loading, batching, shapes, dtypes and
storage, never what the vectors mean."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prism.errors import ConfigError, ModelUnavailable
from prism.runner import Runner
from prism.stages.embeddings import (
    MODEL_ENV,
    EmbeddingsStage,
    ImageTextEncoder,
    model_identity,
    read_vectors,
    resolve_model_dir,
    shot_vectors,
)
from prism.synth import Shot, Title
from testkit.random_clip import random_clip, save_random_clip

DIM = 16  # projection size of the "tiny" random CLIP


@pytest.fixture(scope="module")
def random_clip_dir(tmp_path_factory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("models") / "random-clip-tiny", "tiny", seed=0)


@pytest.fixture
def three_shots(make_video) -> Path:
    title = Title([Shot("testsrc2", 1.2), Shot("mandelbrot", 1.2), Shot("smptehdbars", 1.2)], audio=False)
    return make_video("embeddings-3-shots.mp4", title)[0]


@pytest.fixture
def jpegs(tmp_path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = tmp_path / f"kf{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


def test_skipped_with_how_to_when_no_model_is_configured(three_shots, tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    [title] = Runner(tmp_path).run([three_shots], ["embeddings"])
    outcome = {s.stage: s for s in title.stages}["embeddings"]
    assert outcome.status == "skipped"
    assert MODEL_ENV in outcome.reason and "--param embeddings.model=DIR" in outcome.reason
    assert "config.json" in outcome.reason and "save_pretrained" in outcome.reason
    assert title.status == "succeeded" and not (title.title_dir / "embeddings.parquet").exists()
    manifest = json.loads((title.title_dir / "manifest.json").read_text())
    assert manifest["stages"]["embeddings"]["status"] == "skipped"


@pytest.mark.parametrize(
    ("location", "message"),
    [("", MODEL_ENV), ("/no/such/model", "does not exist"), ("s3://models/siglip", "cloud worker"),
     ("nobody/not-in-cache", "Hugging Face cache")],
)  # fmt: skip
def test_unavailable_model_locations_say_why(location, message):
    with pytest.raises(ModelUnavailable, match=message):
        resolve_model_dir(location)


def test_directory_without_weights_is_unavailable(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="no weights"):
        resolve_model_dir(str(tmp_path))


@pytest.mark.slow
def test_runner_embeds_keyframes_and_shots_random_weights(three_shots, tmp_path, random_clip_dir, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    params = {"embeddings": {"model": str(random_clip_dir), "batch_size": 2}}
    [title] = Runner(tmp_path, params=params).run([three_shots], ["embeddings"])
    outcome = {s.stage: s for s in title.stages}["embeddings"]
    assert outcome.status == "succeeded", outcome.reason
    table = pq.read_table(title.title_dir / "embeddings.parquet")
    keyframes = pq.read_table(title.title_dir / "keyframes.parquet").to_pydict()
    shots = pq.read_table(title.title_dir / "shots.parquet").to_pydict()

    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert table.schema.field("shot_index").type == pa.int32() and table.schema.field("time_s").type == pa.float64()
    assert table.schema.metadata[b"prism.vector_dtype"] == b"float32"
    cols = table.to_pydict()
    kf_rows = [i for i, k in enumerate(cols["kind"]) if k == "keyframe"]
    shot_rows = [i for i, k in enumerate(cols["kind"]) if k == "shot"]
    assert len(kf_rows) == len(keyframes["frame"]) >= 3
    assert [cols["shot_index"][i] for i in shot_rows] == sorted(set(keyframes["shot_index"]))
    assert [cols["frame"][i] for i in kf_rows] == keyframes["frame"]
    assert [cols["path"][i] for i in kf_rows] == keyframes["path"]
    assert all(cols["frame"][i] is None and cols["time_s"][i] is None for i in shot_rows)
    for i in range(table.num_rows):
        s = cols["shot_index"][i]
        assert (cols["start_s"][i], cols["end_s"][i]) == (shots["start_s"][s], shots["end_s"][s])

    vectors = read_vectors(table)
    assert vectors.dtype == np.float32 and vectors.shape == (table.num_rows, DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for i in shot_rows:  # a shot's vector is the normalized mean of its keyframes'
        mean = vectors[[j for j in kf_rows if cols["shot_index"][j] == cols["shot_index"][i]]].mean(axis=0)
        np.testing.assert_allclose(vectors[i], mean / np.linalg.norm(mean), atol=1e-5)

    encoder = ImageTextEncoder.load(random_clip_dir)  # the stage's vectors are the encoder's
    direct = encoder.embed_files([title.title_dir / p for p in keyframes["path"]], batch_size=8)
    np.testing.assert_allclose(vectors[kf_rows], direct, atol=1e-5)

    # a plain directory is named by its folder and a hash of its weights (sha256 over each file's sha256)
    weights = sorted(random_clip_dir.glob("*.safetensors"))
    assert weights
    digest = hashlib.sha256(b"".join(hashlib.sha256(f.read_bytes()).digest() for f in weights)).hexdigest()
    revision = f"weights-sha256:{digest[:16]}"
    assert set(cols["model"]) == {"random-clip-tiny"} and set(cols["model_revision"]) == {revision}
    manifest = json.loads((title.title_dir / "manifest.json").read_text())
    assert manifest["stages"]["embeddings"]["model"] == {"name": "random-clip-tiny", "version": revision}
    assert manifest["stages"]["embeddings"]["metrics"]["dim"] == DIM

    [again] = Runner(tmp_path, params=params).run([three_shots], ["embeddings"])
    assert {s.stage: s for s in again.stages}["embeddings"].reused


def test_parquet_round_trip_pandas_and_duckdb_random_weights(tmp_path, jpegs, random_clip_dir):
    from prism.artifacts import write_parquet
    from prism.stages.embeddings import embeddings_table

    encoder = ImageTextEncoder.load(random_clip_dir)
    vectors = encoder.embed_files(jpegs[:4], batch_size=4)
    keyframes = pa.table({"shot_index": pa.array([0, 0, 1, 2], pa.int32()), "frame": pa.array([3, 40, 80, 130], pa.int64()),
                          "time_s": [0.12, 1.6, 3.2, 5.2], "path": [p.name for p in jpegs[:4]]})  # fmt: skip
    shots = pa.table(
        {"shot_index": pa.array([0, 1, 2], pa.int32()), "start_s": [0.0, 3.0, 5.0], "end_s": [3.0, 5.0, 6.0]}
    )
    path = tmp_path / "embeddings.parquet"
    write_parquet(path, embeddings_table(keyframes, shots, vectors, encoder.info))

    table = pq.read_table(path)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert table["kind"].to_pylist() == ["shot", "keyframe", "keyframe", "shot", "keyframe", "shot", "keyframe"]
    np.testing.assert_array_equal(read_vectors(table)[[1, 2, 4, 6]], vectors)
    _, expected_shots, counts = shot_vectors(np.array([0, 0, 1, 2]), vectors)
    np.testing.assert_array_equal(read_vectors(table)[[0, 3, 5]], expected_shots)
    assert table["keyframes"].to_pylist() == [2, 1, 1, 1, 1, 1, 1] and counts.tolist() == [2, 1, 1]

    df = table.to_pandas()
    assert np.asarray(df["vector"][1], np.float32).shape == (DIM,)
    assert df["frame"].isna().tolist() == [True, False, False, True, False, True, False]

    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(
        f"SELECT shot_index, len(vector), vector[1] FROM '{path}' WHERE kind = 'shot' ORDER BY 1"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(0, DIM), (1, DIM), (2, DIM)]
    assert rows[0][2] == pytest.approx(float(expected_shots[0, 0]), abs=1e-6)


def test_loads_model_directory_random_weights(random_clip_dir, tmp_path):
    encoder = ImageTextEncoder.load(random_clip_dir)
    assert encoder.dim == DIM and encoder.device == "cpu"
    assert type(encoder.model).__name__ == "CLIPModel"
    info = model_identity(random_clip_dir)
    assert encoder.info == info and info.name == "random-clip-tiny" and info.version.startswith("weights-sha256:")
    other = model_identity(save_random_clip(tmp_path / "random-clip-tiny", "tiny", seed=1))
    assert other.name == info.name and other.version != info.version  # other weights, other revision


def test_cached_model_id_is_named_by_repo_and_commit(random_clip_dir, tmp_path):
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--acme--clip-tiny" / "snapshots" / commit
    shutil.copytree(random_clip_dir, snapshot)
    info = model_identity(snapshot)
    assert (info.name, info.version) == ("acme/clip-tiny", commit)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 16])
def test_vectors_do_not_depend_on_batch_size_random_weights(random_clip_dir, jpegs, batch_size):
    encoder = ImageTextEncoder.load(random_clip_dir)
    reference = np.concatenate([encoder.encode_images([encoder.load_image(p)]) for p in jpegs])
    vectors = encoder.embed_files(jpegs, batch_size=batch_size, workers=2)
    assert vectors.shape == (len(jpegs), DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert encoder.embed_files([], batch_size=batch_size).shape == (0, DIM)


def test_text_vectors_random_weights(random_clip_dir):
    encoder = ImageTextEncoder.load(random_clip_dir)
    texts = ["a beach at night", "two people talking in a kitchen", "밤의 해변", ""]
    vectors = encoder.encode_texts(texts)
    assert vectors.shape == (4, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(texts[:1]), vectors[:1], atol=1e-5)  # padding does not leak
    assert not np.allclose(vectors[0], vectors[1])
    assert encoder.encode_texts(["a very long query " * 40]).shape == (1, DIM)  # truncated to the model's length


def test_in_memory_random_clip_has_a_distinct_identity():
    encoder = random_clip("tiny", seed=3)
    assert encoder.info.name == "random-clip-tiny" and encoder.info.version == "seed-3"
    from PIL import Image

    assert encoder.encode_images([Image.new("RGB", (30, 20))]).shape == (1, DIM)


@pytest.mark.parametrize(
    "params",
    [{"device": "tpu"}, {"dtype": "int8"}, {"batch_size": -1}, {"workers": -1}, {"batch": 4}],
)
def test_bad_params_are_rejected_at_construction(params):
    with pytest.raises(ConfigError):
        EmbeddingsStage(params)


def _processor_vectors(encoder: ImageTextEncoder, images) -> np.ndarray:
    """The reference: transformers' own processor, then the model."""
    import torch

    from prism.stages.embeddings import _normalized

    pixels = encoder.processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return _normalized(encoder.model.get_image_features(pixel_values=pixels.to(encoder.model.dtype)))


@pytest.fixture
def odd_jpegs(tmp_path) -> list[Path]:
    """Sizes the stage was not tuned on: portrait, odd, smaller than the model's input, 4:3, 720p."""
    from PIL import Image

    rng = np.random.default_rng(5)
    paths = []
    for i, (h, w) in enumerate([(160, 90), (201, 333), (20, 30), (480, 640), (720, 1280)]):
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        img = (ramp * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
        paths.append(tmp_path / f"odd{i}.jpg")
        Image.fromarray(img).save(paths[-1], quality=90)
    return paths


def _processors():
    from transformers import CLIPImageProcessor

    clip = random_clip("tiny").processor  # shortest edge 32, bicubic, center crop, CLIP mean/std
    siglip_like = CLIPImageProcessor(
        size={"height": 32, "width": 32}, do_center_crop=False, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )  # fixed size, bilinear, no crop: SigLIP's preprocessing
    return {"clip": clip, "siglip-like": siglip_like}


@pytest.mark.parametrize("kind", ["clip", "siglip-like"])
def test_tensor_preprocessing_equals_the_processor_random_weights(kind, odd_jpegs):
    import torch

    encoder = random_clip("tiny", seed=2)
    encoder.processor = _processors()[kind]
    encoder.transform = type(encoder.transform).from_processor(encoder.processor)
    assert encoder.transform is not None
    images = [encoder.load_image(p) for p in odd_jpegs]
    for image in images:  # pixel by pixel: at most one uint8 level apart (PIL's fixed-point rounding)
        want = encoder.processor(images=[image], return_tensors="pt")["pixel_values"]
        got = encoder.transform([np.asarray(image)], "cpu", torch.float32)
        assert got.shape == want.shape
        std = min(encoder.transform.std)
        assert (got - want).abs().max().item() <= 1.01 / 255 / std
        assert (got - want).abs().mean().item() < 0.2 / 255 / std  # most pixels equal
    reference = np.concatenate([_processor_vectors(encoder, [image]) for image in images])
    vectors = encoder.embed_files(odd_jpegs, batch_size=2, workers=3)  # the stage's path: decode once, torch ops
    np.testing.assert_allclose(vectors, reference, atol=2e-3)
    assert (vectors * reference).sum(axis=1).min() > 0.9999  # cosine similarity


def test_processor_the_transform_does_not_cover_is_called_as_is_random_weights(odd_jpegs):
    from transformers import CLIPImageProcessor

    from prism.stages.embeddings import ImageTransform

    encoder = random_clip("tiny", seed=2)
    encoder.processor = CLIPImageProcessor(size={"shortest_edge": 32, "longest_edge": 40}, crop_size=32)
    encoder.transform = ImageTransform.from_processor(encoder.processor)
    assert encoder.transform is None  # a longest-edge cap: not reproduced, so not guessed
    assert ImageTransform.from_processor(CLIPImageProcessor(resample=0)) is None  # nearest: not covered either
    images = [encoder.load_image(p) for p in odd_jpegs]
    np.testing.assert_allclose(encoder.embed_files(odd_jpegs, 4), _processor_vectors(encoder, images), atol=1e-5)


def test_decode_workers_default_to_the_core_count():
    import os

    from prism.stages.embeddings import EmbeddingsParams, resolve_workers

    assert EmbeddingsParams().workers == 0 and resolve_workers(0) == os.cpu_count() and resolve_workers(3) == 3
