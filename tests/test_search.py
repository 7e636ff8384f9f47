"""Shot search and near-duplicates over a local output directory.

Most tests publish hand-made vectors whose neighbours are known (no model, no video); the
text and image query tests use a CLIP with RANDOM weights, which checks the query path and
that query and shot vectors come from the same model, not retrieval quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from prism.artifacts import title_dir, write_parquet
from prism.catalog import SQLiteCatalog, StageRecord, TitleRecord
from prism.cli import app
from prism.errors import ConfigError
from prism.search import IndexOptions, NoEmbeddings, ShotIndex, _Store, find_duplicates, find_shots
from prism.stages.base import ModelInfo
from prism.stages.embeddings import ImageTextEncoder, embeddings_table
from testkit.random_clip import save_random_clip

MODEL = ModelInfo("test-vectors", "rev-1")
DIM = 32
EXACT = IndexOptions()
HNSW = IndexOptions(exact_max=0)  # forces the approximate index on a handful of vectors


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    w = v + noise * rng.standard_normal(v.shape).astype(np.float32)
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def publish(out: Path, title_id: str, keyframe_vectors: np.ndarray, model: ModelInfo = MODEL, fingerprint: str = "fp1"):
    """Write a title as the embeddings stage would: one keyframe per shot, 2 s shots; record it in the catalog."""
    n = len(keyframe_vectors)
    keyframes = pa.table(
        {
            "shot_index": pa.array(range(n), pa.int32()),
            "frame": pa.array([50 * i + 10 for i in range(n)], pa.int64()),
            "time_s": [2.0 * i + 0.4 for i in range(n)],
            "path": [f"keyframes/{i:05d}_{50 * i + 10:07d}.jpg" for i in range(n)],
        }
    )
    shots = pa.table({"shot_index": pa.array(range(n), pa.int32()), "start_s": [2.0 * i for i in range(n)],
                      "end_s": [2.0 * i + 2.0 for i in range(n)]})  # fmt: skip
    write_parquet(
        title_dir(out, title_id) / "embeddings.parquet", embeddings_table(keyframes, shots, keyframe_vectors, model)
    )
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    catalog.put_title(TitleRecord(title_id, f"file:///{title_id}.mp4", 1, "sha", "succeeded", None, "0", "now"))
    catalog.put_stage(
        StageRecord(title_id, "embeddings", "succeeded", None, model.name, model.version, "p", fingerprint, "sha",
                    "then", "now", 1.0, "0", ["embeddings.parquet"])
    )  # fmt: skip
    catalog.close()


@pytest.fixture
def library(tmp_path):
    """Three titles of random shots; ep2 shot 3 repeats ep1 shot 0 (an intro), ep1 shot 7 recaps ep1 shot 2."""
    rng = np.random.default_rng(7)
    ep1, ep2, ep3 = unit(rng, 12), unit(rng, 10), unit(rng, 8)
    ep2[3] = near(ep1[0], rng)
    ep1[7] = near(ep1[2], rng)
    for name, vecs in (("ep1", ep1), ("ep2", ep2), ("ep3", ep3)):
        publish(tmp_path, name, vecs)
    return tmp_path, {"ep1": ep1, "ep2": ep2, "ep3": ep3}


@pytest.mark.parametrize("options", [EXACT, HNSW], ids=["exact", "hnsw"])
def test_search_ranks_known_neighbours_first(library, options):
    out, vectors = library
    index = ShotIndex.open(out, options=options)
    assert len(index) == 30 and index.dim == DIM and sorted(index.titles) == ["ep1", "ep2", "ep3"]
    rng = np.random.default_rng(1)
    for title, shot in (("ep3", 5), ("ep2", 9), ("ep1", 4)):
        hits = index.search(near(vectors[title][shot], rng, 0.05), top_k=5)
        assert (hits[0].shot.title_id, hits[0].shot.shot_index) == (title, shot)
        assert hits[0].score > 0.9 > hits[1].score
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert hits[0].shot.start_s == 2.0 * shot and hits[0].shot.end_s == 2.0 * shot + 2.0
        assert hits[0].shot.keyframe == f"keyframes/{shot:05d}_{50 * shot + 10:07d}.jpg"
    exact = vectors["ep1"] @ vectors["ep1"][4]  # scores are cosine similarities
    hits = index.search(vectors["ep1"][4], top_k=30, title="ep1")
    assert [h.shot.title_id for h in hits] == ["ep1"] * 12
    np.testing.assert_allclose([h.score for h in hits], np.sort(exact)[::-1], atol=1e-5)


def retire(out: Path, title_id: str) -> None:
    """The title's embeddings stage no longer succeeded (as after a failed rerun)."""
    catalog = SQLiteCatalog(out / "catalog.sqlite")
    catalog.put_stage(StageRecord(title_id, "embeddings", "failed", "gone", None, None, None, None, None,
                                  None, "now", 0.0, "0", []))  # fmt: skip
    catalog.close()


@pytest.mark.parametrize("options", [IndexOptions(max_stale=0.3), IndexOptions(exact_max=0, max_stale=0.3)],
                         ids=["exact", "hnsw"])  # fmt: skip
def test_index_follows_the_catalog_without_rebuilding_until_too_stale(library, monkeypatch, options):
    out, vectors = library
    first = ShotIndex.open(out, options=options)
    builds = []
    real_build = _Store._build
    monkeypatch.setattr(_Store, "_build", lambda self, *a: builds.append(1) or real_build(self, *a))
    assert len(ShotIndex.open(out, options=options)) == 30 and not builds  # nothing changed: loaded as is

    rng = np.random.default_rng(3)
    publish(out, "ep4", unit(rng, 5))
    grown = ShotIndex.open(out, options=options)
    assert len(grown) == 35 and not builds  # appended
    np.testing.assert_array_equal(grown.vectors(0, 30), first.vectors())

    replaced = unit(rng, 4)
    publish(out, "ep2", replaced, fingerprint="fp2")  # ep2 was rerun: old rows retired, new ones appended
    rerun = ShotIndex.open(out, options=options)
    assert not builds and len(rerun) == 29 and rerun.stale == [(12, 10)]
    hit = rerun.search(replaced[2])[0]
    assert (hit.shot.title_id, hit.shot.shot_index) == ("ep2", 2) and hit.score == pytest.approx(1.0, abs=1e-5)
    old = rerun.search(vectors["ep2"][6], top_k=29)
    assert len(old) == 29 and all(h.score < 0.9 for h in old)  # the retired vector is never returned
    assert {(p.a.title_id, p.b.title_id) for p in rerun.duplicates(0.95)} == {("ep1", "ep1")}
    assert rerun.search(replaced[1], top_k=10, title="ep2")[0].shot.shot_index == 1

    retire(out, "ep1")  # 22 of 39 rows retired: past max_stale, rebuilt
    rebuilt = ShotIndex.open(out, options=options)
    assert builds == [1] and len(rebuilt) == rebuilt.index.ntotal == 17 and rebuilt.stale == []
    assert sorted(rebuilt.titles) == ["ep2", "ep3", "ep4"]


def test_index_switches_to_hnsw_past_exact_max(library):
    out, vectors = library
    assert not hasattr(ShotIndex.open(out, options=IndexOptions(exact_max=40)).index, "hnsw")
    publish(out, "ep4", unit(np.random.default_rng(5), 20))
    index = ShotIndex.open(out, options=IndexOptions(exact_max=40))
    assert hasattr(index.index, "hnsw") and len(index) == 50
    assert index.search(vectors["ep3"][1])[0].shot.title_id == "ep3"


def test_other_models_vectors_are_kept_apart(library):
    out, _ = library
    other = ModelInfo("other", "rev-9")
    publish(out, "clip-title", unit(np.random.default_rng(2), 6, dim=8), model=other)
    with pytest.raises(ConfigError, match="several models"):
        ShotIndex.open(out)
    index = ShotIndex.open(out, MODEL)
    assert "clip-title" not in index.titles and index.excluded == {"rev-9": 1}
    assert ShotIndex.open(out, other).titles == ["clip-title"]
    with pytest.raises(NoEmbeddings):
        ShotIndex.open(out, ModelInfo("missing", "rev-0"))


def test_no_catalog_or_no_embeddings_says_what_to_run(tmp_path):
    with pytest.raises(NoEmbeddings, match="prism run"):
        ShotIndex.open(tmp_path)
    SQLiteCatalog(tmp_path / "catalog.sqlite").close()
    with pytest.raises(NoEmbeddings, match="--stages embeddings"):
        ShotIndex.open(tmp_path)


@pytest.mark.parametrize("options", [EXACT, HNSW], ids=["exact", "hnsw"])
def test_duplicates_inside_and_across_titles(library, options):
    out, _ = library
    index = ShotIndex.open(out, options=options)
    pairs = index.duplicates(0.95)
    found = {((p.a.title_id, p.a.shot_index), (p.b.title_id, p.b.shot_index)) for p in pairs}
    assert found == {(("ep1", 0), ("ep2", 3)), (("ep1", 2), ("ep1", 7))}
    assert all(p.score > 0.95 for p in pairs) and len({p.group for p in pairs}) == 2
    across = index.duplicates(0.95, across_titles=True)
    assert [(p.a.title_id, p.b.title_id) for p in across] == [("ep1", "ep2")]
    assert {(p.a.title_id, p.b.title_id) for p in index.duplicates(0.95, title="ep2")} == {("ep1", "ep2")}
    assert index.duplicates(0.95, title="ep3") == []


def test_duplicates_group_an_intro_repeated_in_every_title(tmp_path):
    rng = np.random.default_rng(11)
    intro = unit(rng, 1)[0]
    for k in range(5):
        vecs = unit(rng, 6)
        vecs[0] = near(intro, rng)
        publish(tmp_path, f"ep{k}", vecs)
    pairs = find_duplicates(tmp_path, threshold=0.95)
    assert len(pairs) == 10 and {p.group for p in pairs} == {0}
    assert {p.a.shot_index for p in pairs} | {p.b.shot_index for p in pairs} == {0}


@pytest.fixture(scope="module")
def random_clip_dir(tmp_path_factory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("models") / "random-clip", "tiny", seed=0)


@pytest.fixture
def clip_library(tmp_path, random_clip_dir):
    """Two titles whose shot vectors come from the random-weights CLIP, from JPEGs on disk."""
    from PIL import Image

    encoder = ImageTextEncoder.load(random_clip_dir)
    rng = np.random.default_rng(0)
    images = []
    for title in ("alpha", "beta"):
        paths = []
        for shot in range(4):
            path = title_dir(tmp_path, title) / "keyframes" / f"{shot:05d}_{50 * shot + 10:07d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (72, 128, 3), dtype=np.uint8)).save(path, quality=95)
            paths.append(path)
        publish(tmp_path, title, encoder.embed_files(paths, batch_size=4), model=encoder.info)
        images += paths
    return tmp_path, encoder, images


def test_text_query_random_weights_scores_against_the_same_models_shot_vectors(clip_library, random_clip_dir):
    out, encoder, _ = clip_library
    hits = find_shots(out, text="a beach at night", model=str(random_clip_dir), top_k=8)
    assert len(hits) == 8
    query = encoder.encode_texts(["a beach at night"])[0]
    index = ShotIndex.open(out, encoder.info)
    expected = np.sort(index.vectors() @ query)[::-1]
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)
    only_beta = find_shots(out, text="a beach at night", model=str(random_clip_dir), title="beta")
    assert {h.shot.title_id for h in only_beta} == {"beta"} and len(only_beta) == 4


def test_image_query_random_weights_finds_the_shot_it_came_from(clip_library, random_clip_dir):
    out, _, images = clip_library
    hits = find_shots(out, image=images[6], model=str(random_clip_dir), top_k=3)
    assert (hits[0].shot.title_id, hits[0].shot.shot_index) == ("beta", 2)
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_query_needs_the_model_the_titles_were_embedded_with(clip_library, tmp_path_factory):
    out, _, _ = clip_library
    other = save_random_clip(tmp_path_factory.mktemp("other") / "random-clip", "tiny", seed=1)
    with pytest.raises(NoEmbeddings, match="no title has embeddings from model"):
        find_shots(out, text="anything", model=str(other))
    with pytest.raises(ConfigError, match="either a text query or an image"):
        find_shots(out, model=str(other))


def test_cli_search(clip_library, random_clip_dir):
    out, _, images = clip_library
    cli = CliRunner()
    result = cli.invoke(app, ["search", "--image", str(images[1]), "--top", "2", "--out", str(out),
                              "--model", str(random_clip_dir), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and (rows[0]["title_id"], rows[0]["shot_index"]) == ("alpha", 1)
    assert {"start_s", "end_s", "score", "keyframe"} <= set(rows[0])

    result = cli.invoke(app, ["search", "night", "--out", str(out), "--model", str(random_clip_dir)])
    assert result.exit_code == 0 and "alpha" in result.stdout and "00:00:02.0" in result.stdout

    result = cli.invoke(app, ["search", "night", "--out", str(out)], env={"PRISM_EMBEDDINGS_MODEL": ""})
    assert result.exit_code == 2 and "PRISM_EMBEDDINGS_MODEL" in result.output


def test_cli_duplicates(library):
    vectors_out, _ = library
    cli = CliRunner()
    result = cli.invoke(app, ["duplicates", "--out", str(vectors_out), "--threshold", "0.95"])
    assert result.exit_code == 0, result.output
    assert "2 near-duplicate pairs in 2 groups" in result.stdout
    result = cli.invoke(app, ["duplicates", "--out", str(vectors_out), "--across", "--json"])
    assert [(p["a"]["title_id"], p["b"]["title_id"]) for p in json.loads(result.stdout)] == [("ep1", "ep2")]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:100]),  # half-written
        lambda d: (d / "index.faiss").write_bytes(b"not faiss"),
        lambda d: (d / "shots.parquet").write_bytes((d / "shots.parquet").read_bytes()[:50]),
        lambda d: (d / "state.json").write_text('{"version": 2, "titles": 3}'),
        lambda d: (d / "state.json").write_text("[]"),
    ],
    ids=["faiss-cut", "faiss-garbage", "shots-cut", "state-wrong-shape", "state-not-a-dict"],
)
def test_a_damaged_index_is_rebuilt_not_a_traceback(library, damage):
    """The index is derived data ("safe to delete"): damaged or half-written, the next search rebuilds it."""
    out, vecs = library
    before = ShotIndex.open(out, MODEL).search(vecs["ep2"][4], top_k=3)
    [directory] = [p for p in (out / "index" / "embeddings").iterdir() if p.is_dir()]
    damage(directory)
    after = ShotIndex.open(out, MODEL).search(vecs["ep2"][4], top_k=3)
    assert [(h.shot.title_id, h.shot.shot_index) for h in after] == [
        (h.shot.title_id, h.shot.shot_index) for h in before
    ]
    assert (after[0].shot.title_id, after[0].shot.shot_index) == ("ep2", 4)
    result = CliRunner().invoke(app, ["duplicates", "--out", str(out), "--json"])  # and the CLI reads it again
    assert result.exit_code == 0, result.output


def test_image_query_that_is_not_an_image_is_one_line_exit_2(clip_library, random_clip_dir, tmp_path):
    out, _, _ = clip_library
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is a text file")
    result = CliRunner().invoke(app, ["search", "--image", str(fake), "--out", str(out),
                                      "--model", str(random_clip_dir)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "holiday.jpg" in result.output and "not an image" in result.output
