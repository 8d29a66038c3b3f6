"""The deploy bundle: build it (the `bundle` stage) and load + verify it (the server and the CLI).

Layout (docs/architecture.md): ``model.onnx``, ``index.faiss``, ``ids.parquet``, ``manifest.json`` and, unless
``bundle.thumbnails.enabled`` is false, gallery thumbnails in ``thumbnails-NNNNN.parquet`` shards. The
manifest lists the sha256 of every other file and carries ``manifest_sha256``: the sha256 of its own
canonical JSON without that key, so a changed byte in any file is caught.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.serving.config import BundleParams
from deepmetric.serving.thumbnails import SHARD_PATTERN, ThumbnailError, Thumbnails, build_thumbnail_shards

FORMAT = "deepmetric-bundle/1"
MODEL_FILE, INDEX_FILE, IDS_FILE, MANIFEST_FILE = "model.onnx", "index.faiss", "ids.parquet", "manifest.json"
PAYLOAD_FILES = (MODEL_FILE, INDEX_FILE, IDS_FILE)
ID_COLUMNS = ("id", "label", "class_name", "path")


class BundleError(ValueError):
    """A bundle that must not be served. ``file`` names the offending file, ``reason`` says why."""

    def __init__(self, file: str, reason: str) -> None:
        self.file, self.reason = file, reason
        super().__init__(f"bundle refused: {file}: {reason}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _versions(torch_version: str | None) -> dict[str, str]:
    import faiss
    import onnx
    import onnxruntime

    import deepmetric

    return {
        "deepmetric": deepmetric.__version__,
        "torch (export)": torch_version or "unknown",
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
    }


def _accepted(metrics: Mapping[str, Any] | None, params: BundleParams) -> dict[str, float]:
    metrics = dict(metrics or {})
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    missing = sorted(set(params.require) - set(numeric))
    if missing:
        raise BundleError("metrics.json", f"bundle.require names {missing}, which metrics.json lacks "
                          f"(it has {sorted(numeric)})")
    failed = [f"{k} = {numeric[k]:.4f} < {v}" for k, v in params.require.items() if numeric[k] < v]
    if failed:
        raise BundleError("metrics.json", "model not accepted: " + "; ".join(failed) + " (bundle.require)")
    if params.accepted_on is None:
        return numeric
    absent = sorted(set(params.accepted_on) - set(numeric))
    if absent:
        raise BundleError("metrics.json", f"bundle.accepted_on names {absent}, which metrics.json lacks")
    return {k: numeric[k] for k in params.accepted_on}


def _short(digest: Any) -> str:
    return str(digest)[:12] if digest else "none"


def _lineage(onnx_sha: str, index_sha: str, ids: pd.DataFrame, weights: str | None,
             report: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check that the index was built by this model, the report describes this index and these ids, and the
    metrics are this model's; return the manifest's ``lineage``. Each mismatch names the stale file and the
    stage to rerun (``dvc repro`` reruns them all)."""
    from deepmetric.index.gallery import ids_digest

    built_by = report.get("model_sha256")
    if not built_by:
        raise BundleError("index.json", "does not say which model embedded the gallery (a report from before "
                          "lineage was recorded): rerun the index stage")
    if built_by != onnx_sha:
        raise BundleError(INDEX_FILE, f"the gallery was embedded by model {_short(built_by)}, but the packaged "
                          f"model.onnx is {_short(onnx_sha)}: the index is stale, rerun the index stage "
                          "(`dvc repro` reruns every stale stage)")
    if report.get("index_sha256") != index_sha:
        raise BundleError("index.json", f"describes index {_short(report.get('index_sha256'))}, not the packaged "
                          f"index.faiss {_short(index_sha)}: rerun the index stage")
    if report.get("ids_sha256") != ids_digest(ids):
        raise BundleError(IDS_FILE, "does not match the id table the index stage wrote with this index: rerun "
                          "the index stage")
    if not weights:
        raise BundleError(MODEL_FILE, "carries no weights fingerprint (ONNX metadata deepmetric.weights_sha256): "
                          "re-export it with the export stage")
    evaluated = (metrics or {}).get("model_weights_sha256")
    if not evaluated:
        raise BundleError("metrics.json", "does not say which model it evaluated (model_weights_sha256): rerun "
                          "the evaluate stage")
    if evaluated != weights:
        raise BundleError("metrics.json", f"are the metrics of weights {_short(evaluated)}, but model.onnx was "
                          f"exported from weights {_short(weights)}: rerun the evaluate stage so that accepted_on "
                          "describes the packaged model")
    return {
        "model_sha256": onnx_sha,
        "weights_sha256": weights,
        "index_model_sha256": built_by,
        "index_sha256": index_sha,
        "metrics_weights_sha256": evaluated,
        "data_version": report.get("data_version"),
        "gallery_version": 0,
    }


def verify_lineage(manifest: Mapping[str, Any], weights: str | None) -> None:
    """At load: the index was built by the bundle's model and ``accepted_on`` describes its weights."""
    lin = manifest.get("lineage")
    if not isinstance(lin, dict):
        raise BundleError(MANIFEST_FILE, "has no 'lineage' (which model built the index, which model the metrics "
                          "describe): rebuild the bundle with the bundle stage")
    model_sha = manifest["files"][MODEL_FILE]
    if lin.get("index_model_sha256") != model_sha:
        raise BundleError(INDEX_FILE, f"was built by model {_short(lin.get('index_model_sha256'))}, but the "
                          f"bundle's model.onnx is {_short(model_sha)}")
    if lin.get("weights_sha256") != weights:
        raise BundleError(MODEL_FILE, f"was exported from weights {_short(weights)}, the manifest says "
                          f"{_short(lin.get('weights_sha256'))}")
    if manifest.get("accepted_on") and lin.get("metrics_weights_sha256") != weights:
        raise BundleError(MANIFEST_FILE, f"accepted_on holds the metrics of weights "
                          f"{_short(lin.get('metrics_weights_sha256'))}, not of this model ({_short(weights)})")


def build_bundle(
    onnx_bytes: bytes,
    index_bytes: bytes,
    ids: pd.DataFrame,
    metrics: Mapping[str, Any] | None,
    params: BundleParams,
    *,
    index_report: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    created: str | None = None,
    image_root: str | None = None,
    max_pixels: int = 40_000_000,
) -> dict[str, bytes]:
    """``{relpath: bytes}`` for the `deploy_bundle` FileTreeDataset, checked as `load_bundle` will check it.
    ``image_root``: the dataset folder the ids' paths are relative to (for the thumbnails)."""
    from deepmetric.index.build import deserialize_index
    from deepmetric.index.embedder import OnnxEmbedder

    missing_cols = [c for c in ID_COLUMNS if c not in ids.columns]
    if missing_cols:
        raise BundleError(IDS_FILE, f"id table lacks columns {missing_cols}")
    ids = ids[list(ID_COLUMNS)].reset_index(drop=True)
    if not np.array_equal(ids["id"].to_numpy(), np.arange(len(ids))):
        raise BundleError(IDS_FILE, "ids must be 0..N-1 in order (the faiss row numbers)")
    embedder = OnnxEmbedder(onnx_bytes)
    index = deserialize_index(index_bytes)
    if embedder.dim != index.d:
        raise BundleError(MODEL_FILE, f"model output dimension {embedder.dim} != index dimension {index.d}")
    if index.ntotal != len(ids):
        raise BundleError(IDS_FILE, f"{len(ids)} ids for {index.ntotal} index vectors")
    report = dict(index_report or {})
    lineage = _lineage(sha256(onnx_bytes), sha256(index_bytes), ids, embedder.weights_sha256, report, metrics)
    buf = io.BytesIO()
    ids.to_parquet(buf, index=False)
    accepted = _accepted(metrics, params)  # the gate first: no thumbnail work for a model that will not ship
    files = {MODEL_FILE: onnx_bytes, INDEX_FILE: index_bytes, IDS_FILE: buf.getvalue()}
    thumbs = _thumbnails(ids, image_root, params, max_pixels)
    if thumbs is not None:
        files.update(thumbs[1])
    meta = embedder.session.get_modelmeta().custom_metadata_map
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created": created or _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "release": params.release,
        "model_version": sha256(onnx_bytes)[:12],
        "index_version": sha256(index_bytes)[:12],
        "files": {name: sha256(data) for name, data in files.items()},
        "sizes": {name: len(data) for name, data in files.items()},
        "input": embedder.input_meta,
        "embedding_dim": int(embedder.dim),
        "metric": "inner_product",
        "normalized": True,
        "index_factory": report.get("factory", "unknown"),
        "search_params": report.get("search_params", {}),
        "gallery_size": int(index.ntotal),
        "method": embedder.method,
        "model_precision": meta.get("deepmetric.precision", "fp32"),
        "model_quantization": meta.get("deepmetric.quantization"),
        "dataset": dataset,
        "accepted_on": accepted,
        "index_report": {k: report[k] for k in report if k.startswith("recall@")},
        "versions": _versions(meta.get("deepmetric.torch")),
        "thumbnails": thumbs[0] if thumbs is not None else None,
        "lineage": lineage,
    }
    manifest["manifest_sha256"] = sha256(_canonical(manifest))
    files[MANIFEST_FILE] = manifest_bytes(manifest)
    return files


def _thumbnails(ids: pd.DataFrame, image_root: str | None, params: BundleParams,
                max_pixels: int) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """(manifest entry, shard files) of the gallery thumbnails, or None when `bundle.thumbnails.enabled` is false."""
    t = params.thumbnails
    if not t.enabled:
        return None
    if image_root is None:
        raise BundleError("thumbnails", "bundle.thumbnails.enabled is true but no dataset root was given to read "
                          "the gallery images from (set bundle.thumbnails.enabled: false to build without)")
    from deepmetric.data.images import ImageDecodeError

    try:
        shards = build_thumbnail_shards(list(ids["path"].astype(str)), image_root, size=t.size, fmt=t.format,
                                        quality=t.quality, shard_items=t.shard_items, max_pixels=max_pixels)
    except (ImageDecodeError, OSError, ValueError) as e:
        raise BundleError("thumbnails", f"cannot make a gallery thumbnail: {e} (the dataset under {image_root} must "
                          "be the one the index was built from; or set bundle.thumbnails.enabled: false)") from None
    info = {"format": t.format, "size": t.size, "quality": t.quality, "shard_items": t.shard_items,
            "count": len(ids), "files": list(shards), "bytes": sum(len(v) for v in shards.values())}
    return info, shards


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """How manifest.json is written (indented, sorted keys)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def restamp(manifest: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of ``manifest`` with ``fields`` set and ``manifest_sha256`` recomputed. Releases use it to add
    their name and provenance to a built bundle's manifest; the payload files and their sha256 stay as built."""
    out = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    out.update(fields)
    out["manifest_sha256"] = sha256(_canonical(out))
    return out


@dataclass
class Bundle:
    """A verified bundle, ready to embed and search."""

    root: Path
    manifest: dict[str, Any]
    embedder: Any
    index: Any
    ids: pd.DataFrame
    thumbnails: Thumbnails | None = None
    _labels: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Stable item ids (the id table's `id`: increasing, equal to the faiss row number until items are removed).
        self._ids = self.ids["id"].to_numpy(dtype=np.int64)
        self._labels = self.ids["label"].to_numpy()
        self._class_names = self.ids["class_name"].astype(str).to_numpy()
        self._paths = self.ids["path"].astype(str).to_numpy()

    @property
    def spec(self):
        return self.embedder.spec

    @property
    def gallery_size(self) -> int:
        return int(self.index.ntotal)

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

    def row_of(self, item_id: int) -> int | None:
        """The faiss row of gallery id ``item_id`` (None when no item has it)."""
        row = int(np.searchsorted(self._ids, item_id))
        return row if row < len(self._ids) and self._ids[row] == item_id else None

    def neighbours(self, scores: np.ndarray, rows: np.ndarray) -> list[list[dict[str, Any]]]:
        """faiss search output (scores, row numbers) → per query, the neighbours with their ids and labels."""
        results = []
        for srow, irow in zip(scores, rows):
            results.append([
                {"id": int(self._ids[i]), "label": int(self._labels[i]), "class_name": str(self._class_names[i]),
                 "path": str(self._paths[i]), "score": float(s)}
                for s, i in zip(srow, irow) if i >= 0
            ])
        return results

    def search(self, embeddings: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        if not 1 <= k <= self.gallery_size:
            raise ValueError(f"k must be in [1, {self.gallery_size}] (the gallery size), got {k}")
        scores, rows = self.index.search(np.ascontiguousarray(embeddings, dtype=np.float32), k)
        return self.neighbours(scores, rows)


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    if not root.is_dir():
        raise BundleError(str(root), "not a directory (expected a bundle folder with manifest.json)")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(MANIFEST_FILE, f"missing in {root}")
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(MANIFEST_FILE, f"not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(MANIFEST_FILE, "not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(MANIFEST_FILE, f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    want = manifest.get("manifest_sha256")
    if want != sha256(_canonical(manifest)):
        raise BundleError(MANIFEST_FILE, "content does not match its manifest_sha256 (edited or corrupted)")
    files = manifest.get("files")
    expected = set(PAYLOAD_FILES) | set(_thumbnail_files(manifest))
    if not isinstance(files, dict) or set(files) != expected:
        raise BundleError(MANIFEST_FILE, f"'files' must list exactly {sorted(expected)}")
    return manifest


def _thumbnail_files(manifest: Mapping[str, Any]) -> list[str]:
    """The thumbnail shards the manifest declares (plain names of the expected pattern, nothing else)."""
    info = manifest.get("thumbnails")
    if info is None:
        return []
    names = info.get("files") if isinstance(info, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and SHARD_PATTERN.match(n) for n in names):
        raise BundleError(MANIFEST_FILE, "'thumbnails.files' must be a list of thumbnails-NNNNN.parquet names")
    return names


def load_bundle(root: str | Path, threads: int = 0) -> Bundle:
    """Read and verify a bundle: manifest integrity, every file's sha256, the model runs, model output
    dimension = index dimension = manifest dimension, ids match the index. Raises `BundleError`."""
    from deepmetric.index.build import IndexBuildError, deserialize_index
    from deepmetric.index.embedder import OnnxEmbedder

    root = Path(root)
    manifest = read_manifest(root)
    blobs: dict[str, bytes] = {}
    for name in (*PAYLOAD_FILES, *_thumbnail_files(manifest)):
        path = root / name
        if not path.is_file():
            raise BundleError(name, f"missing in {root}")
        data = path.read_bytes()
        got = sha256(data)
        if got != manifest["files"][name]:
            raise BundleError(name, f"sha256 {got[:16]}… does not match the manifest's {str(manifest['files'][name])[:16]}… "
                              "(file changed after the bundle was built)")
        blobs[name] = data
    try:
        embedder = OnnxEmbedder(blobs[MODEL_FILE], threads=threads)
    except ValueError as e:
        raise BundleError(MODEL_FILE, str(e)) from None
    try:
        index = deserialize_index(blobs[INDEX_FILE])
    except IndexBuildError as e:
        raise BundleError(INDEX_FILE, str(e)) from None
    try:
        ids = pd.read_parquet(io.BytesIO(blobs[IDS_FILE]))
    except Exception as e:  # pyarrow raises several types
        raise BundleError(IDS_FILE, f"not a readable parquet table ({e})") from None
    dim = manifest.get("embedding_dim")
    if embedder.dim != index.d:
        raise BundleError(MODEL_FILE, f"model output dimension {embedder.dim} != index dimension {index.d} ({INDEX_FILE})")
    if dim != index.d:
        raise BundleError(MANIFEST_FILE, f"embedding_dim {dim} != index dimension {index.d}")
    missing = [c for c in ID_COLUMNS if c not in ids.columns]
    if missing:
        raise BundleError(IDS_FILE, f"lacks columns {missing}")
    if len(ids) != index.ntotal or manifest.get("gallery_size") != index.ntotal:
        raise BundleError(IDS_FILE, f"{len(ids)} ids, index holds {index.ntotal}, manifest says gallery_size "
                          f"{manifest.get('gallery_size')}")
    id_values = ids["id"].to_numpy()
    if len(id_values) and (id_values.min() < 0 or np.any(np.diff(id_values) <= 0)):
        raise BundleError(IDS_FILE, "ids must be non-negative and increasing (one id per faiss row, never reused)")
    verify_lineage(manifest, embedder.weights_sha256)
    if manifest.get("search_params"):
        from deepmetric.index.build import apply_search_params

        try:
            apply_search_params(index, manifest["search_params"])
        except IndexBuildError as e:
            raise BundleError(MANIFEST_FILE, f"search_params do not fit the index: {e}") from None
    thumbnails = None
    if manifest.get("thumbnails") is not None:
        try:
            thumbnails = Thumbnails(manifest["thumbnails"], blobs, int(index.ntotal))
        except ThumbnailError as e:
            raise BundleError("thumbnails", str(e)) from None
    return Bundle(root=root, manifest=manifest, embedder=embedder, index=index, ids=ids, thumbnails=thumbnails)
