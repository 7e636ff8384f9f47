"""Speaker turns: resemblyzer voice embeddings of speech windows, clustered into anonymous speakers.

Each VAD speech span is cut into 1.6 s windows every ``1/rate`` s (resemblyzer's partial
utterances); each window gets a 256-d d-vector. The speaker count comes from two estimates that
fail in opposite ways, and the one that finds more voices wins:

- spectral clustering with the count from the eigengap, auto-tuned as in NME-SC (Park et al.,
  2019: the k-nearest-neighbour pruning of the cosine affinity is chosen to make the normalised
  eigengap largest relative to the pruning). It separates voices closer than any fixed threshold
  would (two real speakers at cosine 0.85), but a speaker heard for a few seconds is too small a
  block to make an eigengap, and is absorbed;
- average-linkage agglomerative clustering cut at cosine similarity ``ahc_similarity``, which
  keeps a short, clearly distinct speaker but merges close voices.

Both are followed by the same clean-up: a cluster of one or two windows is an outlier (a cough)
unless it is far from every other voice; and clusters whose centroids are closer than
``same_voice`` are one voice. That last step makes labels follow the voice, not the words: a
d-vector of a 1.6 s window still carries what was said, so one voice reading a sentence six times
falls into clusters by position in the sentence, whose centroids are all nearly the same voice.
The thresholds were calibrated on the real recordings in tests/data and espeak-ng voices
(docs/benchmarks.md, "Real recordings").

Labels are smoothed over neighbouring windows, a span changes speaker where its window labels
change, and consecutive pieces of the same speaker separated by short pauses are joined into one
turn. Windows are 256 floats each (about 2.5 MB per hour of speech at the default rate); above
``MAX_CLUSTER_WINDOWS`` an evenly spaced sample is clustered and the rest assigned to the nearest
centroid, so time and memory stay bounded.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from prism.audio.speech import SR, Span

MAX_CLUSTER_WINDOWS = 1200  # eigendecompositions of this size take ~0.3 s each
MIN_WINDOWS = 6  # fewer windows than this are too little evidence for a second speaker
PRUNING_STEPS = 16
MIN_EMBED_S = 0.5  # shorter spans take the label of the nearest window


@dataclass(frozen=True)
class SpeakerConfig:
    num_speakers: int = 0  # 0 = estimate from the data
    max_speakers: int = 10
    window_rate: float = 2.5  # windows per second
    merge_gap_s: float = 1.0
    smooth_windows: int = 2  # majority vote over +/- this many windows of the same span
    ahc_similarity: float = 0.62  # agglomerative estimate: average cosine similarity that still joins two clusters
    same_voice: float = 0.88  # clusters whose centroids are at least this similar are one voice
    distinct_voice: float = 0.7  # a cluster of 1-2 windows stays a speaker only below this similarity to all others

    def __post_init__(self) -> None:
        for name in ("ahc_similarity", "same_voice", "distinct_voice"):
            if not -1.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a cosine similarity in (-1, 1)")


@dataclass(frozen=True)
class SpeakerTurn:
    speaker: str
    start_s: float
    end_s: float


def _import_resemblyzer():
    """Import resemblyzer; its webrtcvad dependency imports pkg_resources, gone from setuptools >= 81.

    Prism uses only the voice encoder, never webrtcvad, so when that import fails a stub module
    stands in for webrtcvad rather than pinning an old setuptools for everyone.
    """
    try:
        return importlib.import_module("resemblyzer")
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            raise
        sys.modules.pop("webrtcvad", None)
        stub = types.ModuleType("webrtcvad")
        stub.__doc__ = "stand-in: webrtcvad 2.0.10 cannot import without pkg_resources; unused by Prism"
        sys.modules["webrtcvad"] = stub
        return importlib.import_module("resemblyzer")


@functools.lru_cache(maxsize=2)
def load_encoder(device: str):
    resemblyzer = _import_resemblyzer()
    return resemblyzer.VoiceEncoder(device=device, verbose=False)


def encoder_id() -> str:
    return f"resemblyzer-{version('Resemblyzer')}"


class WindowEmbedder:
    """Collects (time, d-vector) windows span by span, as blocks stream past."""

    def __init__(self, encoder, config: SpeakerConfig):
        self.encoder = encoder
        self.config = config
        self.times: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []
        self.span_of: list[np.ndarray] = []
        self.spans: list[Span] = []

    def add(self, audio: np.ndarray, offset_s: float, spans: list[Span]) -> None:
        for span in spans:
            index = len(self.spans)
            self.spans.append(span)
            if span.end_s - span.start_s < MIN_EMBED_S:
                continue
            a = max(0, int(round((span.start_s - offset_s) * SR)))
            b = min(audio.size, int(round((span.end_s - offset_s) * SR)))
            wav = audio[a:b].astype(np.float32)
            rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
            if rms < 1e-5:
                continue
            wav = wav * np.float32(10 ** (-20 / 20) / rms)  # level-independent embeddings
            _, partials, slices = self.encoder.embed_utterance(wav, return_partials=True, rate=self.config.window_rate)
            centers = np.array([(s.start + min(s.stop, wav.size)) / 2 / SR for s in slices]) + span.start_s
            self.times.append(centers)
            self.vectors.append(np.asarray(partials, np.float32))
            self.span_of.append(np.full(len(slices), index))

    def turns(self) -> list[SpeakerTurn]:
        if not self.spans:
            return []
        if not self.vectors:  # only very short spans: one anonymous speaker
            return _join([SpeakerTurn("SPEAKER_00", s.start_s, s.end_s) for s in self.spans], self.config.merge_gap_s)
        times = np.concatenate(self.times)
        vectors = np.concatenate(self.vectors)
        span_of = np.concatenate(self.span_of)
        labels = _smooth(cluster(vectors, self.config), span_of, self.config.smooth_windows)
        names = _names_by_first_appearance(labels)
        pieces: list[SpeakerTurn] = []
        for index, span in enumerate(self.spans):
            mine = np.flatnonzero(span_of == index)
            if mine.size == 0:
                nearest = int(np.argmin(np.abs(times - (span.start_s + span.end_s) / 2)))
                pieces.append(SpeakerTurn(names[labels[nearest]], span.start_s, span.end_s))
                continue
            start = span.start_s
            for k in range(1, mine.size):
                a, b = mine[k - 1], mine[k]
                if labels[a] != labels[b]:
                    cut = round(float(times[a] + times[b]) / 2, 3)
                    pieces.append(SpeakerTurn(names[labels[a]], start, cut))
                    start = cut
            pieces.append(SpeakerTurn(names[labels[mine[-1]]], start, span.end_s))
        return _join(pieces, self.config.merge_gap_s)


def cluster(vectors: np.ndarray, config: SpeakerConfig) -> np.ndarray:
    """Cluster labels (0..k-1) of d-vectors; k fixed by ``num_speakers`` or estimated."""
    n = vectors.shape[0]
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    if n < MIN_WINDOWS and not config.num_speakers:
        return np.zeros(n, np.int64)
    sample = x
    if n > MAX_CLUSTER_WINDOWS:
        sample = x[np.linspace(0, n - 1, MAX_CLUSTER_WINDOWS).astype(np.int64)]
    labels = _spectral(sample, config.num_speakers, config.max_speakers)
    if not config.num_speakers:
        spectral = _merge_same_voice(sample, _drop_tiny_clusters(sample, labels, config.distinct_voice), config)
        agglomerative = _merge_same_voice(
            sample, _drop_tiny_clusters(sample, _agglomerative(sample, config), config.distinct_voice), config
        )
        labels = agglomerative if _count(agglomerative) > _count(spectral) else spectral
    else:
        labels = _drop_tiny_clusters(sample, labels)
    if sample is x:
        return labels
    ids = np.unique(labels)
    centroids = np.stack([sample[labels == k].mean(axis=0) for k in ids])
    return ids[np.argmax(x @ centroids.T, axis=1)]


def _spectral(x: np.ndarray, fixed: int, max_k: int) -> np.ndarray:
    """NME-SC: for each pruning p, binarised p-NN cosine graph -> normalised Laplacian -> eigengap.

    The p with the smallest ``(p / n) / normalised max eigengap`` wins; its eigengap gives the
    speaker count (unless ``fixed``), and k-means on its first k eigenvectors gives the labels.
    """
    from scipy.linalg import eigh
    from sklearn.cluster import KMeans

    n = x.shape[0]
    if n <= 2:
        return np.zeros(n, np.int64) if not fixed else np.arange(n) % max(fixed, 1)
    sim = x @ x.T
    order = np.argsort(-sim, axis=1)
    # a speaker is someone heard for at least MIN_WINDOWS windows: bounds k on short inputs, where
    # a sparse graph falls apart into many small components and would fake a large late eigengap
    max_k = max(1, min(max_k, n // MIN_WINDOWS))
    best = None
    for p in sorted({int(v) for v in np.linspace(max(2, n // 50), max(2, n // 2), PRUNING_STEPS)}):
        graph = np.zeros_like(sim)
        graph[np.arange(n)[:, None], order[:, :p]] = 1.0
        graph = (graph + graph.T) / 2
        inv = 1 / np.sqrt(graph.sum(axis=1))
        values, vectors = eigh(np.eye(n) - inv[:, None] * graph * inv[None, :])
        gaps = np.diff(values[: max_k + 1])
        k = fixed or int(np.argmax(gaps)) + 1
        score = (p / n) / max(float(gaps.max()) / max(float(values[-1]), 1e-9), 1e-9)
        if best is None or score < best[0]:
            best = (score, k, vectors[:, :k])
    assert best is not None  # the loop above runs at least once
    _, k, embedding = best
    if k == 1:
        return np.zeros(n, np.int64)
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-9)
    return KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(embedding).astype(np.int64)


def _count(labels: np.ndarray) -> int:
    return int(np.unique(labels).size)


def _centroids(x: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    c = np.stack([x[labels == k].mean(axis=0) for k in ids])
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-9)


def _agglomerative(x: np.ndarray, config: SpeakerConfig) -> np.ndarray:
    """Average-linkage clusters of cosine distance, cut where the clusters are less similar than ``ahc_similarity``."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if x.shape[0] < 2:
        return np.zeros(x.shape[0], np.int64)
    tree = linkage(x, method="average", metric="cosine")
    labels = fcluster(tree, t=1.0 - config.ahc_similarity, criterion="distance").astype(np.int64) - 1
    if _count(labels) > config.max_speakers:
        labels = fcluster(tree, t=config.max_speakers, criterion="maxclust").astype(np.int64) - 1
    return labels


def _merge_same_voice(x: np.ndarray, labels: np.ndarray, config: SpeakerConfig) -> np.ndarray:
    """Join the two clusters with the most similar centroids while they are at least ``same_voice`` alike."""
    labels = labels.copy()
    while _count(labels) > 1:
        ids = np.unique(labels)
        c = _centroids(x, labels, ids)
        sim = c @ c.T
        np.fill_diagonal(sim, -1.0)
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if sim[i, j] < config.same_voice:
            break
        labels[labels == ids[j]] = ids[i]
    return labels


def _drop_tiny_clusters(
    x: np.ndarray, labels: np.ndarray, distinct_voice: float | None = None, min_windows: int = 3
) -> np.ndarray:
    """A cluster of one or two windows is an outlier (a cough, a laugh), not a speaker ...

    ... unless it has two windows and its centroid is less similar than ``distinct_voice`` to every
    larger cluster: a speaker heard for two or three seconds (one line in a scene) is kept.
    """
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids[counts >= min_windows]
    if keep.size == 0 or keep.size == ids.size:
        return labels
    centroids = _centroids(x, labels, keep)
    out = labels.copy()
    for k, count in zip(ids, counts):
        if count >= min_windows:
            continue
        mine = labels == k
        own = _centroids(x, labels, np.array([k]))[0]
        if distinct_voice is not None and count >= 2 and float((centroids @ own).max()) < distinct_voice:
            continue
        out[mine] = keep[np.argmax(x[mine] @ centroids.T, axis=1)]
    return out


def _smooth(labels: np.ndarray, span_of: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return labels
    out = labels.copy()
    for i in range(labels.size):
        lo, hi = max(0, i - radius), min(labels.size, i + radius + 1)
        near = labels[lo:hi][span_of[lo:hi] == span_of[i]]
        values, counts = np.unique(near, return_counts=True)
        if counts.max() > (near.size // 2):
            out[i] = values[np.argmax(counts)]
    return out


def _names_by_first_appearance(labels: np.ndarray) -> dict[int, str]:
    names: dict[int, str] = {}
    for label in labels.tolist():
        if label not in names:
            names[label] = f"SPEAKER_{len(names):02d}"
    return names


def _join(pieces: list[SpeakerTurn], merge_gap_s: float) -> list[SpeakerTurn]:
    out: list[SpeakerTurn] = []
    for piece in sorted(pieces, key=lambda p: p.start_s):
        if out and out[-1].speaker == piece.speaker and piece.start_s - out[-1].end_s <= merge_gap_s:
            out[-1] = SpeakerTurn(piece.speaker, out[-1].start_s, max(out[-1].end_s, piece.end_s))
        else:
            out.append(piece)
    return out
