"""Shot search and near-duplicate shots over every title in a local output directory.

The index covers the shot vectors (``kind == "shot"``) of every title whose ``embeddings``
stage succeeded in ``<out>/catalog.sqlite``, for one model (vectors of different models are not
comparable). It is a faiss index kept in ``<out>/index/embeddings/<model>/``: exact inner
product (= cosine, the vectors are normalized) up to ``exact_max`` shots, HNSW above, so a query
stays within milliseconds at hundreds of thousands of shots. Opening it syncs with the
catalog: new titles are appended; the rows of a title that was rerun or removed are retired in
place (excluded from every search) and its new rows appended, and the index is rebuilt from the
titles' ``embeddings.parquet`` only once ``max_stale`` of its rows are retired.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prism.artifacts import atomic_path, title_dir, write_json, write_parquet
from prism.catalog import SQLiteCatalog
from prism.errors import ConfigError, PrismError
from prism.stages.base import ModelInfo
from prism.stages.embeddings import ARTIFACT, read_vectors

if TYPE_CHECKING:
    import faiss

    from prism.stages.embeddings import ImageTextEncoder

log = logging.getLogger(__name__)

INDEX_DIR = Path("index") / "embeddings"
STAGE = "embeddings"
STATE_VERSION = 2
SHOTS_SCHEMA = pa.schema(
    [
        ("title_id", pa.string()),
        ("shot_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("keyframe", pa.string()),  # the shot's keyframe closest to its mean vector, title-relative
    ]
)


class NoEmbeddings(PrismError):
    """Nothing to search: no title in the output directory has embeddings (for this model)."""


@dataclass(frozen=True)
class IndexOptions:
    exact_max: int = 50_000  # up to this many shots: exact search; above: HNSW
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    max_stale: float = 0.25  # rebuild once this fraction of rows belongs to rerun or removed titles

    def __post_init__(self) -> None:
        if self.exact_max < 0 or self.hnsw_m < 4 or self.ef_construction < 1 or self.ef_search < 1:
            raise ValueError("exact_max >= 0, hnsw_m >= 4, ef_construction >= 1 and ef_search >= 1")
        if not 0.0 <= self.max_stale <= 1.0:
            raise ValueError("max_stale must be in [0, 1]")


@dataclass(frozen=True)
class ShotRef:
    title_id: str
    shot_index: int
    start_s: float | None
    end_s: float | None
    keyframe: str | None


@dataclass(frozen=True)
class Hit:
    shot: ShotRef
    score: float  # cosine similarity


@dataclass(frozen=True)
class DuplicatePair:
    a: ShotRef
    b: ShotRef
    score: float
    group: int  # pairs sharing a group are one connected set of near-duplicate shots (0 = largest)


@dataclass(frozen=True)
class _TitleSpan:
    title_id: str
    fingerprint: str
    first: int
    count: int


def searchable_titles(catalog: SQLiteCatalog, out_dir: Path) -> dict[tuple[str, str], dict[str, str]]:
    """{(model name, revision): {title_id: fingerprint}} of titles whose embeddings are published."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for title in catalog.list_titles():
        rec = catalog.get_stage(title.title_id, STAGE)
        if rec is None or rec.status != "succeeded" or ARTIFACT not in rec.outputs:
            continue
        if not (title_dir(out_dir, title.title_id) / ARTIFACT).exists():
            continue
        found.setdefault((rec.model_name or "", rec.model_version or ""), {})[title.title_id] = rec.fingerprint or ""
    return found


def choose_model(found: dict[tuple[str, str], dict[str, str]], model: ModelInfo | None) -> ModelInfo:
    """The model to index: the one asked for (matched on revision), else the only one there is."""
    if model is not None:
        if not any(rev == model.version for _, rev in found):
            raise NoEmbeddings(
                f"no title has embeddings from model {model.name} ({model.version}); "
                "run `prism run --stages embeddings` with that model first"
            )
        return model
    if not found:
        raise NoEmbeddings("no title has embeddings yet; run `prism run --stages embeddings` with a model first")
    if len(found) > 1:
        listed = ", ".join(f"{n} ({v}): {len(t)} titles" for (n, v), t in sorted(found.items()))
        raise ConfigError(f"titles were embedded with several models ({listed}); pick one with --model")
    name, version = next(iter(found))
    return ModelInfo(name, version)


class ShotIndex:
    """A faiss index over shot vectors plus the table saying which shot each row is."""

    def __init__(
        self,
        index: faiss.Index,
        shots: pa.Table,
        model: ModelInfo,
        titles: list[_TitleSpan],
        options: IndexOptions,
        stale: list[tuple[int, int]] | None = None,
    ):
        self.index = index
        self.shots = shots
        self.model = model
        self.options = options
        self.stale = stale or []  # (first, count) row ranges of rerun or removed titles, never returned
        self.excluded: dict[str, int] = {}  # other models' revision -> number of titles not searchable here
        self._titles = {t.title_id: t for t in titles}
        self._cols = shots.to_pydict()
        ranges = [np.arange(a, a + n) for a, n in self.stale]
        stale_ids = np.concatenate(ranges or [np.zeros(0, np.int64)]).astype(np.int64)
        self._live = int(index.ntotal) - len(stale_ids)
        self._selector = None
        if len(stale_ids):  # faiss does not own these: keep them alive as long as the index
            self._stale_batch = _faiss().IDSelectorBatch(stale_ids)
            self._selector = _faiss().IDSelectorNot(self._stale_batch)

    def __len__(self) -> int:
        """Live shots (rows of rerun or removed titles not counted)."""
        return self._live

    @property
    def titles(self) -> list[str]:
        return list(self._titles)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def open(
        cls, out_dir: str | Path, model: ModelInfo | None = None, options: IndexOptions | None = None
    ) -> ShotIndex:
        """The index for ``model`` (or the only model there is), brought up to date with the catalog."""
        out_dir = Path(out_dir)
        options = options or IndexOptions()
        path = out_dir / "catalog.sqlite"
        if not path.exists():
            raise NoEmbeddings(f"no catalog at {path}; run `prism run --out {out_dir}` first")
        catalog = SQLiteCatalog(path)
        try:
            found = searchable_titles(catalog, out_dir)
        finally:
            catalog.close()
        model = choose_model(found, model)
        wanted: dict[str, str] = {}
        excluded: dict[str, int] = {}
        for (_, version), titles in found.items():
            if version == model.version:
                wanted.update(titles)
            else:
                excluded[version] = len(titles)
        if excluded:
            log.warning(
                "%d title(s) embedded with other models are not searchable with %s", sum(excluded.values()), model.name
            )
        store = _Store(out_dir / INDEX_DIR / _model_key(model))
        built = store.sync(model, wanted, out_dir, options)
        built.excluded = excluded
        return built

    def _ref(self, row: int) -> ShotRef:
        c = self._cols
        return ShotRef(c["title_id"][row], c["shot_index"][row], c["start_s"][row], c["end_s"][row], c["keyframe"][row])

    def _span(self, title: str) -> _TitleSpan:
        span = self._titles.get(title)
        if span is None:
            raise ConfigError(f"title {title!r} has no embeddings from model {self.model.name} ({self.model.version})")
        return span

    def vectors(self, first: int = 0, count: int | None = None) -> np.ndarray:
        """Stored vectors of rows ``[first, first + count)`` (stale rows included)."""
        count = int(self.index.ntotal) - first if count is None else count
        return self.index.reconstruct_n(first, count) if count else np.zeros((0, self.dim), np.float32)

    def search(self, query: np.ndarray, top_k: int = 10, title: str | None = None) -> list[Hit]:
        """The ``top_k`` shots most similar to ``query`` (one vector), best first."""
        if top_k < 1:
            raise ConfigError("top_k must be >= 1")
        q = _as_queries(query, self.dim)
        if title is not None:  # one title's shots: exact, over a few thousand vectors at most
            span = self._span(title)
            scores = self.vectors(span.first, span.count) @ q[0]
            order = np.argsort(-scores, kind="stable")[:top_k]
            return [Hit(self._ref(span.first + int(i)), float(scores[i])) for i in order]
        if not len(self):
            return []
        scores, ids = self._knn(q, min(top_k, len(self)))
        return [Hit(self._ref(int(i)), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]

    def _knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        if hasattr(self.index, "hnsw"):
            params = faiss.SearchParametersHNSW(efSearch=max(self.options.ef_search, k))
            if self._selector is not None:
                params.sel = self._selector
        else:
            params = faiss.SearchParameters(sel=self._selector) if self._selector is not None else None
        return self.index.search(queries, k, params=params)

    def duplicates(
        self,
        threshold: float = 0.95,
        *,
        title: str | None = None,
        neighbours: int = 20,
        across_titles: bool = False,
    ) -> list[DuplicatePair]:
        """Pairs of shots whose cosine similarity is at least ``threshold``, best first.

        Each shot is compared with its ``neighbours`` nearest shots, so a shot repeated in many
        titles (an intro) still forms one group through its pairs. With ``title``, only pairs
        involving that title; with ``across_titles``, only pairs from two different titles.
        """
        if not -1.0 <= threshold <= 1.0 or neighbours < 1:
            raise ConfigError("threshold must be in [-1, 1] and neighbours >= 1")
        spans = list(self._titles.values()) if title is None else [self._span(title)]
        k = min(neighbours + 1, len(self))
        if k < 2:
            return []
        best: dict[tuple[int, int], float] = {}
        chunks = [
            (lo, min(4096, s.first + s.count - lo)) for s in spans for lo in range(s.first, s.first + s.count, 4096)
        ]
        for lo, n in chunks:
            scores, ids = self._knn(self.vectors(lo, n), k)
            for r, (row_scores, row_ids) in enumerate(zip(scores, ids)):
                i = lo + r
                for s, j in zip(row_scores.tolist(), row_ids.tolist()):
                    if j < 0 or j == i or s < threshold:
                        continue
                    key = (min(i, j), max(i, j))
                    if s > best.get(key, -2.0):
                        best[key] = s
        titles = self._cols["title_id"]
        if across_titles:
            best = {key: s for key, s in best.items() if titles[key[0]] != titles[key[1]]}
        groups = _groups(best)
        pairs = [DuplicatePair(self._ref(i), self._ref(j), s, groups[i]) for (i, j), s in best.items()]
        pairs.sort(key=lambda p: (-p.score, p.a.title_id, p.a.shot_index, p.b.title_id, p.b.shot_index))
        return pairs


def _faiss():
    import faiss

    return faiss


def _groups(pairs: dict[tuple[int, int], float]) -> dict[int, int]:
    """Connected components of the pair graph, numbered by size (0 = largest)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = {x: find(x) for x in list(parent)}
    sizes = Counter(roots.values())
    order = {root: n for n, (root, _) in enumerate(sorted(sizes.items(), key=lambda rs: (-rs[1], rs[0])))}
    return {x: order[root] for x, root in roots.items()}


def _as_queries(query: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(query, np.float32).reshape(-1, dim)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(q / np.maximum(norms, 1e-12))


def _model_key(model: ModelInfo) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.name).strip("-.")[:60] or "model"
    return f"{slug}-{hashlib.sha256(model.version.encode()).hexdigest()[:10]}"


def load_title_shots(out_dir: Path, title_id: str, model: ModelInfo) -> tuple[pa.Table, np.ndarray]:
    """A title's shot rows (as ``SHOTS_SCHEMA``) and their vectors, read from its embeddings.parquet."""
    table = pq.read_table(title_dir(out_dir, title_id) / ARTIFACT)
    revisions = set(table["model_revision"].unique().to_pylist())
    if revisions - {model.version}:
        raise NoEmbeddings(f"{title_id}: {ARTIFACT} holds vectors of {sorted(revisions)}, not {model.version}")
    cols = table.select(["shot_index", "kind", "path", "start_s", "end_s"]).to_pydict()
    vectors = read_vectors(table)
    shot_rows = [i for i, kind in enumerate(cols["kind"]) if kind == "shot"]
    shot_vectors = vectors[shot_rows]
    keyframe: dict[int, tuple[float, str]] = {}
    position = {cols["shot_index"][i]: n for n, i in enumerate(shot_rows)}
    for i, kind in enumerate(cols["kind"]):
        if kind != "keyframe" or cols["shot_index"][i] not in position:
            continue
        s = cols["shot_index"][i]
        score = float(vectors[i] @ shot_vectors[position[s]])
        if s not in keyframe or score > keyframe[s][0]:
            keyframe[s] = (score, cols["path"][i])
    shots = pa.table(
        {
            "title_id": [title_id] * len(shot_rows),
            "shot_index": [cols["shot_index"][i] for i in shot_rows],
            "start_s": [cols["start_s"][i] for i in shot_rows],
            "end_s": [cols["end_s"][i] for i in shot_rows],
            "keyframe": [keyframe.get(cols["shot_index"][i], (0.0, None))[1] for i in shot_rows],
        },
        schema=SHOTS_SCHEMA,
    )
    return shots, np.ascontiguousarray(shot_vectors, dtype=np.float32)


class _Store:
    """One model's index on disk: index.faiss, shots.parquet (row i = faiss id i), state.json (written last)."""

    def __init__(self, directory: Path):
        self.dir = directory

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return None
        if not all((self.dir / name).exists() for name in ("index.faiss", "shots.parquet")):
            return None
        return state

    def sync(self, model: ModelInfo, wanted: dict[str, str], out_dir: Path, options: IndexOptions) -> ShotIndex:
        """Reuse the stored index, appending new titles and retiring rerun or removed ones; rebuild
        when there is none, it is for other options, it outgrew exact search or is too stale."""
        import faiss

        state = self._read_state()
        recorded = state.get("model") if state is not None else None
        model_version = recorded.get("version") if isinstance(recorded, dict) else None
        if state is None or model_version != model.version or state.get("options") != asdict(options):
            return self._build(model, wanted, out_dir, options)
        try:  # the index is derived data: damaged or half-written (a killed run, a full disk), it is rebuilt
            spans = [_TitleSpan(**t) for t in state["titles"]]
            stale = [(int(first), int(count)) for first, count in state["stale"]]
            index = faiss.read_index(str(self.dir / "index.faiss"))
            shots = pq.read_table(self.dir / "shots.parquet", schema=SHOTS_SCHEMA)
            if index.ntotal != shots.num_rows or index.ntotal != sum(s.count for s in spans) + sum(n for _, n in stale):
                raise ValueError(f"{index.ntotal} vectors, {shots.num_rows} shots, rows recorded do not add up")
        except (RuntimeError, OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            log.warning("shot index %s is damaged (%s); rebuilding it", self.dir, str(exc).splitlines()[0][:200])
            return self._build(model, wanted, out_dir, options)
        live = [s for s in spans if wanted.get(s.title_id) == s.fingerprint]
        stale += [(s.first, s.count) for s in spans if wanted.get(s.title_id) != s.fingerprint and s.count]
        new = sorted(set(wanted) - {s.title_id for s in live})
        if len(live) == len(spans) and not new:
            return ShotIndex(index, shots, model, live, options, stale)
        tables, vectors, total = [shots], [], len(shots)
        for tid in new:
            table, vecs = load_title_shots(out_dir, tid, model)
            live.append(_TitleSpan(tid, wanted[tid], total, len(table)))
            total += len(table)
            tables.append(table)
            vectors.append(vecs)
        n_stale = sum(n for _, n in stale)
        if (not hasattr(index, "hnsw") and total - n_stale > options.exact_max) or n_stale > options.max_stale * total:
            return self._build(model, wanted, out_dir, options)
        for vecs in vectors:
            if len(vecs):
                index.add(vecs)
        shots = pa.concat_tables(tables)
        self._save(index, shots, live, stale, model, options)
        return ShotIndex(index, shots, model, live, options, stale)

    def _build(self, model: ModelInfo, wanted: dict[str, str], out_dir: Path, options: IndexOptions) -> ShotIndex:
        log.info("building the shot index for %s over %d title(s)", model.name, len(wanted))
        tables, vectors, spans, total = [], [], [], 0
        for tid in sorted(wanted):
            table, vecs = load_title_shots(out_dir, tid, model)
            spans.append(_TitleSpan(tid, wanted[tid], total, len(table)))
            total += len(table)
            tables.append(table)
            vectors.append(vecs)
        dims = {v.shape[1] for v in vectors if len(v)}
        if len(dims) > 1:
            raise NoEmbeddings(f"titles embedded with {model.name} have vectors of different sizes {sorted(dims)}")
        index = new_index(dims.pop() if dims else 1, total, options)
        for vecs in vectors:
            if len(vecs):
                index.add(vecs)
        shots = pa.concat_tables(tables) if tables else SHOTS_SCHEMA.empty_table()
        self._save(index, shots, spans, [], model, options)
        return ShotIndex(index, shots, model, spans, options)

    def _save(
        self,
        index: faiss.Index,
        shots: pa.Table,
        spans: list[_TitleSpan],
        stale: list[tuple[int, int]],
        model: ModelInfo,
        options: IndexOptions,
    ) -> None:
        import faiss

        with atomic_path(self.dir / "index.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        write_parquet(self.dir / "shots.parquet", shots)
        state = {
            "version": STATE_VERSION,
            "model": model.to_dict(),
            "dim": int(index.d),
            "kind": "hnsw" if hasattr(index, "hnsw") else "exact",
            "options": asdict(options),
            "titles": [asdict(s) for s in spans],
            "stale": [list(r) for r in stale],
        }
        write_json(self.dir / "state.json", state)


def new_index(dim: int, expected: int, options: IndexOptions) -> faiss.Index:
    """Exact inner-product search for up to ``exact_max`` vectors, HNSW beyond."""
    import faiss

    if expected <= options.exact_max:
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = options.ef_construction
    index.hnsw.efSearch = options.ef_search
    return index


def search_text(
    index: ShotIndex, encoder: ImageTextEncoder, text: str, top_k: int = 10, title: str | None = None
) -> list[Hit]:
    """Shots matching a text query, encoded by the same model as the shots."""
    _check_model(index, encoder)
    return index.search(encoder.encode_texts([text])[0], top_k, title)


def search_image(
    index: ShotIndex, encoder: ImageTextEncoder, image: str | Path, top_k: int = 10, title: str | None = None
) -> list[Hit]:
    """Shots that look like a reference image."""
    _check_model(index, encoder)
    try:
        picture = encoder.load_image(image)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ConfigError(f"query image {image}: not an image this can read ({exc.__class__.__name__})") from exc
    return index.search(encoder.encode_images([picture])[0], top_k, title)


def _check_image(image: str | Path) -> None:
    """A query image that is missing or not an image is refused before any model loads."""
    from PIL import Image

    if not Path(image).is_file():
        raise ConfigError(f"query image {image} does not exist")
    try:
        with Image.open(image) as picture:
            picture.verify()
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError (OSError), SyntaxError
        raise ConfigError(f"query image {image}: not an image this can read ({exc.__class__.__name__})") from exc


def _check_model(index: ShotIndex, encoder: ImageTextEncoder) -> None:
    if encoder.info.version != index.model.version:
        raise ConfigError(
            f"the query model {encoder.info.name} ({encoder.info.version}) is not the model the index was built "
            f"with, {index.model.name} ({index.model.version})"
        )


def find_shots(
    out_dir: str | Path,
    *,
    text: str | None = None,
    image: str | Path | None = None,
    model: str = "",
    top_k: int = 10,
    title: str | None = None,
    device: str = "auto",
) -> list[Hit]:
    """Text or image query over every embedded title in ``out_dir``, with the configured model."""
    from prism.stages.embeddings import encoder_for

    if (text is None) == (image is None):
        raise ConfigError("give either a text query or an image, not both or neither")
    if image is not None:
        _check_image(image)
    encoder = encoder_for(model, device)
    index = ShotIndex.open(out_dir, encoder.info)
    if text is not None:
        return search_text(index, encoder, text, top_k, title)
    assert image is not None  # checked above: exactly one of text and image
    return search_image(index, encoder, image, top_k, title)


def find_duplicates(
    out_dir: str | Path,
    *,
    model: str = "",
    threshold: float = 0.95,
    title: str | None = None,
    neighbours: int = 20,
    across_titles: bool = False,
) -> list[DuplicatePair]:
    """Near-duplicate shots from the stored vectors; ``model`` only picks whose vectors (no model is loaded)."""
    from prism.stages.embeddings import model_identity, resolve_model_dir

    info = model_identity(resolve_model_dir(model.strip())) if model.strip() else None
    index = ShotIndex.open(out_dir, info)
    return index.duplicates(threshold, title=title, neighbours=neighbours, across_titles=across_titles)
