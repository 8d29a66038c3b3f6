"""Read and verify a bundle (the server, the CLI, gallery updates, `deepmetric pull`): :func:`load_bundle`.

Nothing is trusted before it is checked: the manifest's own hash, every file's sha256, the model runs, model
output dimension = index dimension = manifest dimension, the ids match the index (each segment's ids its index, the
tombstones name gallery rows), and the lineage (the index was built by this model, ``accepted_on`` holds this
model's metrics). Any failure is a :class:`~deepmetric.bundle.format.BundleError` naming the file. Imports neither
torch nor Kedro.

A gallery changed by updates is the base index, its append-only segments and the tombstones of removed items
(:mod:`deepmetric.bundle.gallery`); :class:`Bundle` searches it as one gallery (:meth:`Bundle.knn`: each part
searched, removed items dropped, results merged by score — for exact indexes, the ids and scores of one index of
the live items).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.bundle.format import (
    FORMAT,
    ID_COLUMNS,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    SHARD_PATTERN,
    THRESHOLDS_FILE,
    TOMBSTONES_FILE,
    BundleError,
    declared_files,
    declared_segments,
    json_document,
    manifest_sha256,
    sha256_file,
    short,
)
from deepmetric.bundle.thresholds import NO_THRESHOLDS, Thresholds, mark_matches, parse_thresholds
from deepmetric.bundle.thumbnails import ThumbnailError, Thumbnails

__all__ = ["OVERFETCH_MAX", "QE_ALPHA", "QE_N", "RERANKINGS", "Bundle", "load_bundle", "read_manifest",
           "verify_file", "verify_lineage"]

#: The serving-time re-rankings (`/v1/search?rerank=`, `deepmetric search --rerank`; none by default).
RERANKINGS = ("qe",)
#: α-QE's neighbourhood and exponent: n = 2 is the one setting that lifted MAP@R with Recall@1 unchanged on the
#: built-in set (benchmarks/evaluation/README.md); α = 3 as in Radenović et al.
QE_N, QE_ALPHA = 2, 3.0


def _is_ivf(index) -> bool:
    import faiss

    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


#: Over-fetch bound of a merged search: a part holding tombstoned items is first searched for ``k`` + its tombstones
#: (at most this many more), then twice as deep while a query lacks ``k`` live neighbours and the part gave it all
#: the rows it asked for.
OVERFETCH_MAX = 1024


@dataclass
class Bundle:
    """A verified bundle, ready to embed and search. Its gallery is the base index plus the append-only segments,
    less the tombstoned (removed) items, searched as one: every method speaks of *gallery rows* — the base
    index's rows, then each segment's, tombstoned rows included (they are only skipped) — and of stable ids."""

    root: Path
    manifest: dict[str, Any]
    embedder: Any
    #: The base faiss index (``index.faiss``).
    index: Any
    #: Every gallery row's id, label, class name and path: ``ids.parquet``, then each segment's rows.
    rows: pd.DataFrame
    thumbnails: Thumbnails | None = None
    #: The match thresholds (None: a bundle built without them — it serves, without ``match``).
    thresholds: Thresholds | None = None
    #: The segments' faiss indexes (exact, inner product), in row order after the base.
    segments: list[Any] = field(default_factory=list)
    #: The tombstoned ids (removed from the gallery, still in the files until a compaction).
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: The live items (rows less the tombstoned ones), numbered from 0.
    ids: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        # Stable item ids (the id table's `id`: increasing over all rows, never reused).
        self._ids = self.rows["id"].to_numpy(dtype=np.int64)
        self._labels = self.rows["label"].to_numpy()
        self._class_names = self.rows["class_name"].astype(str).to_numpy()
        self._paths = self.rows["path"].astype(str).to_numpy()
        self._dead = np.isin(self._ids, self.removed)
        self.ids = self.rows[~self._dead].reset_index(drop=True) if self._dead.any() else self.rows
        self._parts: list[tuple[Any, int, int]] = []
        start = 0
        for index in (self.index, *self.segments):
            self._parts.append((index, start, int(index.ntotal)))
            start += int(index.ntotal)
        self._vectors_lock = threading.Lock()
        self._needs_direct_map = _is_ivf(self.index)

    @property
    def parts(self) -> list[tuple[Any, int, int]]:
        """The base index and each segment's: (faiss index, its first gallery row, its rows)."""
        return list(self._parts)

    @property
    def live(self) -> np.ndarray:
        """Per gallery row, whether its item is in the gallery (not removed)."""
        return ~self._dead

    @property
    def spec(self):
        return self.embedder.spec

    @property
    def gallery_size(self) -> int:
        """Live items: base and segment rows less the tombstoned ones."""
        return len(self._ids) - int(self._dead.sum())

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.embedder.embed(images)

    def examples(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` gallery items of different classes, evenly spread over the classes in id order (the first
        item of each chosen class)."""
        first = self.ids.drop_duplicates("label")
        if len(first) > n:
            first = first.iloc[np.unique(np.linspace(0, len(first) - 1, n).round().astype(int))]
        return [{"id": int(r.id), "label": int(r.label), "class_name": str(r.class_name)} for r in first.itertuples()]

    @property
    def next_id(self) -> int:
        """The id the next added item gets: ``lineage.next_id``, else one past every id the gallery rows hold
        (removed ones included: an id is never given out again)."""
        lineage = self.manifest.get("lineage") or {}
        return int(lineage.get("next_id", int(self._ids.max()) + 1 if len(self._ids) else 0))

    def row_of(self, item_id: int) -> int | None:
        """The gallery row of id ``item_id`` (None when no live item has it)."""
        row = int(np.searchsorted(self._ids, item_id))
        return row if row < len(self._ids) and self._ids[row] == item_id and not self._dead[row] else None

    def knn(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style search of the whole gallery: per embedding the ``k`` best (scores, gallery rows), best first
        (-inf, -1 where fewer than ``k`` live items were found). Each part (base, segments) is searched, the
        tombstoned rows dropped (the part over-fetched by its tombstones, bounded by :data:`OVERFETCH_MAX` and
        deepened where needed), and the parts merged by score (ties: the lower row first, as faiss orders them)."""
        q = np.ascontiguousarray(embeddings, dtype=np.float32)
        if len(self._parts) == 1 and not self._dead.any():
            return self.index.search(q, k)
        got_s, got_r = [], []
        for index, start, n in self._parts:
            if n == 0:
                continue
            dead = self._dead[start : start + n]
            kk = min(n, k + min(int(dead.sum()), OVERFETCH_MAX))
            while True:
                scores, rows = index.search(q, kk)
                live = (rows >= 0) & ~dead[np.maximum(rows, 0)]
                # deeper only for a query short of k live rows that got all kk it asked for (an inverted file
                # that ran out of probed lists returns fewer, padded with -1: a deeper search finds no more)
                if kk == n or not bool(((live.sum(axis=1) < k) & (rows[:, -1] >= 0)).any()):
                    break
                kk = min(n, 2 * kk)
            got_s.append(np.where(live, scores, -np.inf).astype(np.float32))
            got_r.append(np.where(live, rows + start, -1))
        scores, rows = np.concatenate(got_s, axis=1), np.concatenate(got_r, axis=1)
        order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -scores), axis=-1)[:, :k]
        scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        if scores.shape[1] < k:  # fewer rows than k in all parts together
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return scores, rows

    def neighbours(self, scores: np.ndarray, rows: np.ndarray) -> list[list[dict[str, Any]]]:
        """Search output (scores, gallery rows) → per query, the neighbours with their ids and labels."""
        results = []
        for srow, irow in zip(scores, rows):
            results.append([
                {"id": int(self._ids[i]), "label": int(self._labels[i]), "class_name": str(self._class_names[i]),
                 "path": str(self._paths[i]), "score": float(s)}
                for s, i in zip(srow, irow) if i >= 0
            ])
        return results

    def search(self, embeddings: np.ndarray, k: int, rerank: str | None = None) -> list[list[dict[str, Any]]]:
        """The ``k`` nearest gallery items of each embedding; ``rerank="qe"``: ordered by α-query expansion
        (:meth:`ranked`)."""
        if not 1 <= k <= self.gallery_size:
            raise ValueError(f"k must be in [1, {self.gallery_size}] (the gallery size), got {k}")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        scores, rows = self.knn(embeddings, self.first_k(k, rerank))
        return self.ranked(embeddings, scores, rows, k, rerank)

    def first_k(self, k: int, rerank: str | None) -> int:
        """How many neighbours the first search must return for ``k`` results under ``rerank``."""
        return min(max(k, QE_N), self.gallery_size) if rerank == "qe" else k

    def ranked(self, embeddings: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int,
               rerank: str | None = None) -> list[list[dict[str, Any]]]:
        """Per query, its ``k`` neighbours from a first search (``scores``, ``rows``: :meth:`first_k` columns).
        ``rerank="qe"``: α-QE (n = ``QE_N``, α = ``QE_ALPHA``; :mod:`deepmetric.evaluation.rerank`) — each query
        is expanded over its ``QE_N`` nearest gallery vectors and searched again; the neighbours come in the order
        of the expanded query's score (``qe_score``) while ``score`` stays the cosine of the query itself, the
        score the match thresholds were calibrated on."""
        if rerank is None:
            return self.neighbours(scores[:, :k], rows[:, :k])
        if rerank != "qe":
            raise ValueError(f"rerank must be one of {list(RERANKINGS)}, got {rerank!r}")
        from deepmetric.evaluation.rerank import expand

        first = rows[:, :QE_N]
        sims = np.where(first >= 0, scores[:, :QE_N], -np.inf)
        expanded = expand(embeddings, self.vectors(first), sims, QE_ALPHA)
        qe_scores, qe_rows = self.knn(expanded, k)
        cosine = np.einsum("bd,bkd->bk", embeddings.astype(np.float32), self.vectors(qe_rows))
        out = self.neighbours(cosine, qe_rows)
        for hits, qs, r in zip(out, qe_scores, qe_rows):
            for h, q in zip(hits, qs[r >= 0]):
                h["qe_score"] = float(q)
        return out

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The gallery vectors of gallery ``rows`` (any shape; -1, a missing neighbour: zeros), shape ``rows`` × d.
        An inverted-file base index gets its direct map (row → list entry) on first use."""
        flat = np.asarray(rows, dtype=np.int64).ravel()
        with self._vectors_lock:
            if self._needs_direct_map:
                import faiss

                faiss.extract_index_ivf(self.index).make_direct_map()
                self._needs_direct_map = False
        out = np.zeros((len(flat), int(self.index.d)), dtype=np.float32)
        for index, start, n in self._parts:
            inside = (flat >= start) & (flat < start + n)
            if inside.any():
                out[inside] = index.reconstruct_batch(flat[inside] - start)
        return out.reshape(*np.shape(rows), -1)

    def live_items(self, batch: int = 10_000) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        """The live items in gallery row order, ``batch`` rows at a time: their id rows and their vectors, read back
        from the indexes (decoded codes for compressed ones; an inverted-file index gets its direct map) — memory
        bounded by ``batch`` whatever the gallery size. faiss' ``RuntimeError`` where an index cannot give its
        vectors back."""
        from deepmetric.index.build import make_reconstructible

        for index, start, n in self._parts:
            make_reconstructible(index)
            for a in range(0, n, batch):
                m = min(batch, n - a)
                keep = ~self._dead[start + a : start + a + m]
                if keep.any():
                    vectors = np.asarray(index.reconstruct_n(a, m), dtype=np.float32)[keep]
                    yield self.rows.iloc[start + a : start + a + m][keep], vectors

    def operating_point(self, fmr: float | None) -> dict[str, float] | None:
        """The operating point at ``fmr`` (None: the bundle's default) as ``{"fmr", "threshold"}``; None for a
        bundle without thresholds when no fmr is asked. ``ValueError`` (a message for the user) when ``fmr`` is
        outside (0, 1), not one of the bundle's points, or asked of a bundle without thresholds."""
        if self.thresholds is None:
            if fmr is None:
                return None
            raise ValueError(f"fmr {fmr:g} asked, but {NO_THRESHOLDS}")
        return self.thresholds.point(fmr).as_dict()

    def search_payload(self, images: list[str], neighbours: list[list[dict[str, Any]]], k: int,
                       point: dict[str, float] | None) -> dict[str, Any]:
        """The answer of a search, as `/v1/search` and `deepmetric search` give it: the versions, ``k``, per image
        its neighbours — each marked ``match`` (``score >= threshold``) at ``point`` (from
        :meth:`operating_point`), which the answer names as ``operating_point``; without thresholds (``point``
        None) neither."""
        out: dict[str, Any] = {"model_version": self.manifest.get("model_version"),
                               "index_version": self.manifest.get("index_version"), "k": k}
        if point is not None:
            mark_matches(neighbours, point["threshold"])
            out["operating_point"] = point
        out["results"] = [{"image": name, "neighbors": hits} for name, hits in zip(images, neighbours)]
        return out


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the bundle folder ``root``, checked against its own ``manifest_sha256`` and for the list
    of files it must declare (the files themselves are checked by :func:`load_bundle`)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(str(root), "not a directory (expected a bundle folder with manifest.json)")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(MANIFEST_FILE, f"missing in {root}")
    manifest = json_document(path.read_bytes(), MANIFEST_FILE, FORMAT)
    want = manifest.get("manifest_sha256")
    if want != manifest_sha256(manifest):
        raise BundleError(MANIFEST_FILE, "content does not match its manifest_sha256 (edited or corrupted)")
    files = manifest.get("files")
    expected = set(declared_files(manifest))
    if not isinstance(files, dict) or set(files) != expected:
        raise BundleError(MANIFEST_FILE, f"'files' must list exactly {sorted(expected)}")
    return manifest


def verify_lineage(manifest: Mapping[str, Any], weights: str | None) -> None:
    """At load: the index was built by the bundle's model and ``accepted_on`` describes its weights."""
    lin = manifest.get("lineage")
    if not isinstance(lin, dict):
        raise BundleError(MANIFEST_FILE, "has no 'lineage' (which model built the index, which model the metrics "
                          "describe): rebuild the bundle with the bundle stage")
    model_sha = manifest["files"][MODEL_FILE]
    if lin.get("index_model_sha256") != model_sha:
        raise BundleError(INDEX_FILE, f"was built by model {short(lin.get('index_model_sha256'))}, but the "
                          f"bundle's model.onnx is {short(model_sha)}")
    if lin.get("weights_sha256") != weights:
        raise BundleError(MODEL_FILE, f"was exported from weights {short(weights)}, the manifest says "
                          f"{short(lin.get('weights_sha256'))}")
    if manifest.get("accepted_on") and lin.get("metrics_weights_sha256") != weights:
        raise BundleError(MANIFEST_FILE, f"accepted_on holds the metrics of weights "
                          f"{short(lin.get('metrics_weights_sha256'))}, not of this model ({short(weights)})")


_VERIFIED: OrderedDict[tuple[int, int], tuple[Any, ...]] = OrderedDict()
"""Files whose sha256 was checked in this process: (device, inode) → (size, mtime, ctime, link count) and the
hash. Keyed by inode, not path: the bundle versions of a gallery share their unchanged files as hard links, so a
file checked in one version is known in the next. A reload skips hashing a file whose stat is the same as when
its hash was checked; a changed ctime alone is accepted when the link count changed too (a hard link made or
removed by a gallery update moves the ctime without touching the content)."""
_VERIFIED_MAX = 4096
RACY_NS = 2_000_000_000
"""A file modified (mtime) less than this long before its hash was checked is not remembered (git's racy-clean
rule): a write within the file system's timestamp granularity after the check could keep its size and mtime."""


def _stamp(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink


def _unchanged(known: tuple[Any, ...] | None, stamp: tuple[int, ...], want: str) -> bool:
    if known is None:
        return False
    size, mtime, ctime, nlink, digest = known
    return (digest == want and (size, mtime) == stamp[2:4]
            and (ctime == stamp[4] or nlink != stamp[5]))


def verify_file(root: Path, name: str, want: str) -> bool:
    """Check ``root / name`` against its manifest sha256 ``want``, streamed (memory bounded, whatever the size);
    skipped when this process already checked the same file (same device, inode, size, mtime, and ctime — or a
    link count that changed with it) against the same hash. Raises `BundleError` naming the file; returns whether
    the hash was computed."""
    path = root / name
    if not path.is_file():
        raise BundleError(name, f"missing in {root}")
    stamp = _stamp(path)
    key = stamp[:2]
    if _unchanged(_VERIFIED.get(key), stamp, want):
        _VERIFIED[key] = (*stamp[2:], want)
        _VERIFIED.move_to_end(key)
        return False
    checked_at = time.time_ns()
    got = sha256_file(path)
    if got != want:
        _VERIFIED.pop(key, None)
        raise BundleError(name, f"sha256 {got[:16]}… does not match the manifest's {str(want)[:16]}… "
                          "(file changed after the bundle was built)")
    if _stamp(path) == stamp and checked_at - stamp[3] > RACY_NS:
        _VERIFIED[key] = (*stamp[2:], want)
        while len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)
    return True


def _read_ids(root: Path, name: str) -> pd.DataFrame:
    try:
        ids = pd.read_parquet(root / name)
    except Exception as e:  # pyarrow raises several types
        raise BundleError(name, f"not a readable parquet table ({e})") from None
    missing = [c for c in ID_COLUMNS if c not in ids.columns]
    if missing:
        raise BundleError(name, f"lacks columns {missing}")
    return ids


def _read_index(root: Path, name: str, mmap: bool):
    from deepmetric.index.build import IndexBuildError, read_index_file

    try:
        return read_index_file(str(root / name), mmap=mmap)
    except IndexBuildError as e:
        raise BundleError(name, str(e)) from None


def _read_segments(root: Path, manifest: Mapping[str, Any], dim: int, mmap: bool) -> tuple[list[Any], list[pd.DataFrame]]:
    """The segments' indexes and id rows, each checked against the other and the manifest."""
    import faiss

    indexes, tables = [], []
    for seg in declared_segments(manifest):
        index = _read_index(root, seg["index"], mmap)
        if index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise BundleError(seg["index"], f"dimension {index.d} / metric {index.metric_type}: the segments of a "
                              f"gallery of dimension {dim} are inner-product indexes of that dimension")
        ids = _read_ids(root, seg["ids"])
        if not len(ids) == index.ntotal == seg["items"]:
            raise BundleError(seg["ids"], f"{len(ids)} ids, {seg['index']} holds {index.ntotal}, the manifest says "
                              f"{seg['items']} items")
        indexes.append(index)
        tables.append(ids)
    return indexes, tables


def _read_tombstones(root: Path, manifest: Mapping[str, Any], ids: np.ndarray) -> np.ndarray:
    info = manifest.get("tombstones")
    if info is None:
        return np.zeros(0, dtype=np.int64)
    try:
        removed = pd.read_parquet(root / TOMBSTONES_FILE)["id"].to_numpy(dtype=np.int64)
    except Exception as e:  # pyarrow raises several types, KeyError without the column
        raise BundleError(TOMBSTONES_FILE, f"not a parquet table with an int64 'id' column ({e})") from None
    if len(removed) != info["items"] or np.any(np.diff(removed) <= 0):
        raise BundleError(TOMBSTONES_FILE, f"{len(removed)} ids (the manifest says {info['items']}), which must be "
                          "increasing")
    unknown = removed[~np.isin(removed, ids)]
    if len(unknown):
        raise BundleError(TOMBSTONES_FILE, f"removes ids {unknown[:10].tolist()} that no gallery row has")
    return removed


def load_bundle(root: str | Path, threads: int = 0, mmap: bool = True) -> Bundle:
    """Read and verify a bundle: manifest integrity, every file's sha256 (streamed, and not again for a file
    this process checked unchanged), the model runs, model output dimension = index dimension = manifest
    dimension, ids match the index (and each segment's ids its index; the tombstones name gallery rows). With
    ``mmap`` the faiss indexes are memory-mapped from their files (read-only: what compacts the gallery loads with
    ``mmap=False``). Raises `BundleError`."""
    from deepmetric.index.embedder import OnnxEmbedder

    root = Path(root)
    manifest = read_manifest(root)
    names = declared_files(manifest)
    for name in names:
        verify_file(root, name, manifest["files"][name])
    # the model, thresholds and thumbnail shards are used as bytes; the indexes are mapped, the ids read from files
    blobs = {name: (root / name).read_bytes() for name in names
             if name in (MODEL_FILE, THRESHOLDS_FILE) or SHARD_PATTERN.match(name)}
    try:
        embedder = OnnxEmbedder(blobs[MODEL_FILE], threads=threads)
    except ValueError as e:
        raise BundleError(MODEL_FILE, str(e)) from None
    index = _read_index(root, INDEX_FILE, mmap)
    ids = _read_ids(root, IDS_FILE)
    dim = manifest.get("embedding_dim")
    if embedder.dim != index.d:
        raise BundleError(MODEL_FILE, f"model output dimension {embedder.dim} != index dimension {index.d} ({INDEX_FILE})")
    if dim != index.d:
        raise BundleError(MANIFEST_FILE, f"embedding_dim {dim} != index dimension {index.d}")
    segments, tables = _read_segments(root, manifest, dim, mmap)
    rows = pd.concat([ids[list(ID_COLUMNS)], *(t[list(ID_COLUMNS)] for t in tables)], ignore_index=True) \
        if tables else ids
    id_values = rows["id"].to_numpy()
    removed = _read_tombstones(root, manifest, id_values)
    if len(ids) != index.ntotal or manifest.get("gallery_size") != len(rows) - len(removed):
        raise BundleError(IDS_FILE, f"{len(ids)} ids, index holds {index.ntotal}, manifest says gallery_size "
                          f"{manifest.get('gallery_size')}" + (f" ({len(rows) - len(ids)} items in segments, "
                                                               f"{len(removed)} removed)" if tables or len(removed)
                                                              else ""))
    if len(id_values) and (id_values.min() < 0 or np.any(np.diff(id_values) <= 0)):
        raise BundleError(IDS_FILE, "ids must be non-negative and increasing (one id per faiss row, never reused)")
    verify_lineage(manifest, embedder.weights_sha256)
    if manifest.get("search_params"):
        from deepmetric.index.build import IndexBuildError, apply_search_params

        try:
            apply_search_params(index, manifest["search_params"])
        except IndexBuildError as e:
            raise BundleError(MANIFEST_FILE, f"search_params do not fit the index: {e}") from None
    thresholds = parse_thresholds(blobs[THRESHOLDS_FILE]) if THRESHOLDS_FILE in blobs else None
    thumbnails = None
    if manifest.get("thumbnails") is not None:
        try:
            thumbnails = Thumbnails(manifest["thumbnails"], blobs, len(rows))
        except ThumbnailError as e:
            raise BundleError("thumbnails", str(e)) from None
    return Bundle(root=root, manifest=manifest, embedder=embedder, index=index, rows=rows, thumbnails=thumbnails,
                  thresholds=thresholds, segments=segments, removed=removed)
