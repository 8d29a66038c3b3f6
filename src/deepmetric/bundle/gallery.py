"""Live gallery updates: add images to a bundle's gallery, or remove items, without retraining; compaction.

``deepmetric gallery add|remove`` (:func:`update_gallery`) reads a verified bundle, embeds the new images with the
bundle's own ONNX model through the evaluation transform (the code the index stage and the server use, with the
same per-image bounds), and writes a new bundle version that costs what it changes. The base ``index.faiss`` and
``ids.parquet``, the model, the match thresholds and the thumbnail shards are not rewritten: the new version
folder gets them as hard links (copies where a link cannot be made, e.g. across file systems). It adds an
append-only *segment* — ``segment-NNNNN.faiss``, an exact inner-product index of the added vectors (``NNNNN`` the
new ``lineage.gallery_version``), with its id rows ``segment-NNNNN.parquet`` — thumbnail shards for the added
images only, and for removals ``tombstones.parquet`` (every removed id). The manifest declares and checksums each
of them (``segments``, ``tombstones``; :mod:`deepmetric.bundle.format`), ``gallery_size`` counts the live items,
``lineage.gallery_version`` + 1 and the parent manifest's sha256 record where the version came from. Search sees
base + segments − tombstones as one gallery (:meth:`deepmetric.bundle.Bundle.knn`). Removal works for every index
type (nothing is rebuilt), and adding never reads vectors back from the index.

Compaction (:func:`compact_gallery`, ``deepmetric gallery compact``) folds the segments and tombstones into one
base index of the bundle's factory: the live vectors are read back from the base (``reconstruct_n``: exact for
Flat, HNSW*,Flat and IVF*,Flat; for SQ/PQ-coded indexes the *decoded* vectors, encoded again — an item's codes may
change slightly, within the quantization error) and from the segments (exact), and added to a copy of the base
emptied with ``reset()``, which keeps its trained quantizer and codebooks. An update compacts by itself
(:class:`CompactionPolicy`) when its segments and tombstones together exceed ``share`` (default 20 %) of the live
gallery, or it would hold more than ``max_segments`` (default 16) segments: a merged search costs one search per
part and over-fetches the base by its tombstones.

Every new version is written by the one bundle writer (:func:`~deepmetric.bundle.writer.write_bundle`) into a
temporary folder and verified like any bundle (:func:`~deepmetric.bundle.reader.load_bundle`) *before* it is
renamed into place, so a failed or killed update leaves the destination — and the version it came from, whose
files are only linked, never written — as it was.

Where the new version goes: in place (``dest`` omitted, or the bundle itself), or to ``dest`` when nothing is there.
An existing ``dest`` is replaced only when it is a bundle folder (its manifest.json and the files it lists, nothing
else) and ``replace`` is given; anything else there (a user's folder, a file) is refused and left untouched. A
symlink (``releases/current``, as ``deepmetric pull`` makes it) is never replaced by a folder: the new version goes
to a new folder beside the link's target (``v3`` → ``v3-g1``, named after the new ``gallery_version``) and the link
is repointed at it atomically, so the old version stays for rollback.

An added image whose embedding equals a gallery item's (the same picture) or another added image's is refused
unless ``allow_duplicates``; then it is added and listed in the summary's ``duplicates``.

Ids are stable: the id tables' ``id`` column names an item for as long as it is in the gallery (compaction
renumbers gallery rows, never ids); new items get ids from ``lineage.next_id`` on, and a removed id is never given
out again. Removing an id twice is refused, naming it.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.bundle.format import (FORMAT, ID_COLUMNS, IDS_FILE, INDEX_FILE, MANIFEST_FILE, MODEL_FILE,
                                     THRESHOLDS_FILE, TOMBSTONES_FILE, declared_files, declared_segments,
                                     segment_names, sha256, timestamp)
from deepmetric.bundle.reader import Bundle, load_bundle
from deepmetric.bundle.writer import point_link, seal, write_bundle
from deepmetric.data.images import ImageLimits

__all__ = ["CompactionPolicy", "GalleryError", "NewItem", "compact_gallery", "describe", "embed_items",
           "update_gallery"]


class GalleryError(ValueError):
    """An update that cannot be made (unknown id, empty result, unreadable image); nothing was written."""


@dataclass(frozen=True)
class NewItem:
    """An image to add: its file (read now), its label and class name, and the path recorded in the id table."""

    file: str
    label: int
    class_name: str | None = None
    path: str | None = None


def embed_items(bundle: Bundle, items: Sequence[NewItem], limits: ImageLimits, batch_size: int = 32) -> np.ndarray:
    """The embeddings of ``items`` by the bundle's model (evaluation transform, under ``limits``), in order."""
    from deepmetric.data.images import ImageDecodeError
    from deepmetric.data.transforms import load_eval_image

    out = []
    for start in range(0, len(items), batch_size):
        batch = []
        for it in items[start : start + batch_size]:
            try:
                batch.append(load_eval_image(it.file, bundle.spec, limits=limits))
            except ImageDecodeError as e:
                raise GalleryError(str(e)) from None
        out.append(bundle.embed(np.stack(batch)))
    return np.concatenate(out) if out else np.zeros((0, bundle.dim), dtype=np.float32)


def _encoded_thumbnails(info: dict[str, Any], items: Sequence[NewItem], limits: ImageLimits) -> list[bytes]:
    """The thumbnails of the added images, as the bundle's ``thumbnails`` entry says to encode them."""
    from deepmetric.bundle.thumbnails import encode_thumbnail
    from deepmetric.data.images import ImageDecodeError, open_image

    out = []
    for it in items:
        try:
            img = open_image(it.file, limits=limits)
        except ImageDecodeError as e:
            raise GalleryError(str(e)) from None
        out.append(encode_thumbnail(img, int(info["size"]), str(info["format"]), int(info.get("quality", 80))))
    return out


def _not_a_bundle(path: Path) -> str | None:
    """Why the existing ``path`` is not a bundle folder that a new version may replace (None when it is one:
    a deepmetric manifest.json and the files it lists, nothing else)."""
    if not path.exists():
        return "is a symlink to nothing"
    if not path.is_dir():
        return "is a file"
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_bytes())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"is not a bundle folder (no deepmetric {MANIFEST_FILE})"
    listed = {MANIFEST_FILE, *(manifest.get("files") or {})}
    others = sorted(p.name for p in path.iterdir() if p.name not in listed)
    if others:
        return f"holds files that are not the bundle's ({', '.join(others[:5])}{', …' if len(others) > 5 else ''})"
    return None


def _check_destination(src: Path, dest: Path, replace: bool) -> Path | None:
    """Refuse a ``dest`` that must not be replaced (see the module docstring); the symlink to repoint at the new
    version, or None when the new version is written as ``dest`` itself."""
    if not os.path.lexists(dest):
        return None
    in_place = src.exists() and dest.exists() and os.path.samefile(src, dest)
    if not in_place:
        why = _not_a_bundle(dest.resolve())
        if why:
            raise GalleryError(f"the destination {dest} exists and {why}: it is left as it is; give a path that does "
                               "not exist")
        if not replace:
            raise GalleryError(f"the destination {dest} holds another bundle version: pass --replace to replace it "
                               "(replace=True), or give a path that does not exist")
    return dest if dest.is_symlink() else None


def _beside(link: Path, gallery_version: int, digest: str) -> tuple[Path, str]:
    """A new folder beside the target of ``link`` for gallery version ``gallery_version`` (``v3`` → ``v3-g1``;
    ``v3-g1`` → ``v3-g2``; with the manifest's sha256 when that name is taken) and the link text naming it (relative
    when the link's is)."""
    target = link.resolve()
    base = re.sub(r"-g\d+(-[0-9a-f]{12})?$", "", target.name)
    for name in (f"{base}-g{gallery_version}", f"{base}-g{gallery_version}-{digest[:12]}"):
        folder = target.parent / name
        if not os.path.lexists(folder):
            text = str(folder) if os.path.isabs(os.readlink(link)) else os.path.relpath(folder, link.parent.resolve())
            return folder, text
    raise GalleryError(f"{link} points at {target}, and both names for the new version beside it exist "
                       f"({base}-g{gallery_version}, …): give --out")


#: Cosine similarity at or above which two embeddings are the same picture (identical input gives identical
#: embeddings up to float rounding, ~1e-7; distinct images of a trained model are far below).
SAME_IMAGE = 1 - 1e-6


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def _same_in_flat(bundle: Bundle, vectors: np.ndarray, removed: set[int]) -> dict[int, int] | None:
    """For a gallery of exact (Flat) parts and unit vectors, per added vector the gallery row of the most similar
    live item with a cosine of at least :data:`SAME_IMAGE` — without searching the whole gallery: two unit vectors
    that close differ by at most √(2·(1 − SAME_IMAGE)) in every coordinate, so only the items inside that window
    of the first coordinate (sorted once), then of the second, are compared. None where this does not apply
    (another index type, or vectors that are not unit length): the caller searches."""
    import faiss

    flats = [faiss.downcast_index(index) for index, _, _ in bundle.parts]
    norms = np.linalg.norm(vectors, axis=1)
    if (not bundle.manifest.get("normalized") or not all(isinstance(f, faiss.IndexFlat) for f in flats)
            or np.abs(norms - 1).max(initial=0) > 1e-3 or vectors.shape[1] < 2):
        return None
    r = float(np.sqrt(2 * (1 - SAME_IMAGE))) * 1.01 + 1e-6  # the window, with room for float rounding
    best: dict[int, tuple[float, int]] = {}
    live = bundle.live
    for flat, (_, start, n) in zip(flats, bundle.parts):
        if n == 0:
            continue
        xb = faiss.rev_swig_ptr(flat.get_xb(), n * flat.d).reshape(n, flat.d)  # the stored vectors, not copied
        first = np.ascontiguousarray(xb[:, 0])
        order = np.argsort(first, kind="stable")
        first = first[order]
        lo = np.searchsorted(first, vectors[:, 0] - r, "left")
        hi = np.searchsorted(first, vectors[:, 0] + r, "right")
        for i in np.flatnonzero(hi > lo):
            cand = order[lo[i]:hi[i]]
            cand = cand[np.abs(xb[cand, 1] - vectors[i, 1]) <= r]
            if not len(cand):
                continue
            cos = xb[cand] @ vectors[i] / np.maximum(np.linalg.norm(xb[cand], axis=1) * norms[i], 1e-12)
            for j in np.argsort(-cos, kind="stable"):
                row = start + int(cand[j])
                if cos[j] < SAME_IMAGE:
                    break
                if live[row] and int(bundle.rows["id"].iat[row]) not in removed:
                    if i not in best or cos[j] > best[i][0]:
                        best[i] = (float(cos[j]), row)
                    break
    return {int(i): row for i, (_, row) in best.items()}


def _duplicates(bundle: Bundle, items: Sequence[NewItem], vectors: np.ndarray,
                removed: set[int]) -> list[dict[str, Any]]:
    """Added images that are the same picture as a gallery item (kept, not removed now) or as an earlier added
    image: their embeddings' cosine similarity is at least :data:`SAME_IMAGE`. Exact for Flat, HNSW*,Flat and
    IVF*,Flat indexes (and the segments); SQ/PQ-coded ones store approximate vectors, so a duplicate of a base
    item may go unseen (never the other way round: the cosine is taken with the stored vector)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    found: dict[int, dict[str, Any]] = {}
    same = _same_in_flat(bundle, vectors, removed)
    if same is None:
        same = {}
        k = min(bundle.gallery_size, len(removed) + 1)
        scores, rows = bundle.knn(vectors, k) if k else (np.zeros((len(vectors), 0)), np.zeros((len(vectors), 0)))
        for i, rrow in enumerate(rows):
            hits = [r for r in rrow if r >= 0 and bundle.rows["id"].iat[r] not in removed]
            # the cosine with the stored vector, not the search's score (approximate for SQ/PQ codes: it can
            # exceed the true cosine)
            if hits and _cosine(vectors[i], bundle.vectors(np.array(hits[:1]))[0]) >= SAME_IMAGE:
                same[i] = int(hits[0])
    for i, row in sorted(same.items()):
        found[i] = {"image": items[i].path or str(items[i].file), "same_as_id": int(bundle.rows["id"].iat[row])}
    among = faiss.IndexFlatIP(vectors.shape[1])
    among.add(vectors)
    lims, _, pairs = among.range_search(vectors, SAME_IMAGE - 1e-9)  # every pair with a similarity above it
    for i in range(len(items)):
        earlier = [int(j) for j in pairs[lims[i]:lims[i + 1]] if j < i]
        if earlier and i not in found:
            j = min(earlier)
            found[i] = {"image": items[i].path or str(items[i].file),
                        "same_as_image": items[j].path or str(items[j].file)}
    return [found[i] for i in sorted(found)]


def describe(dups: Sequence[dict[str, Any]]) -> str:
    """The duplicates of :func:`update_gallery`'s summary in words (the first ten)."""
    return "; ".join(f"{d['image']} is the same image as " + (f"gallery item {d['same_as_id']}" if "same_as_id" in d
                                                               else f"{d['same_as_image']}, given before it")
                     for d in dups[:10]) + ("; …" if len(dups) > 10 else "")


@dataclass(frozen=True)
class CompactionPolicy:
    """When an update compacts the gallery by itself: its segments' items and its tombstones together above
    ``share`` of the live gallery, or more than ``max_segments`` segments (module docstring)."""

    share: float = 0.2
    max_segments: int = 16

    def __post_init__(self) -> None:
        if not self.share > 0 or self.max_segments < 0:
            raise GalleryError(f"compaction share must be > 0 and max_segments >= 0, got {self.share}, "
                               f"{self.max_segments}")

    def due(self, segment_items: int, tombstones: int, segments: int, live: int) -> bool:
        return segments > self.max_segments or segment_items + tombstones > self.share * live


@dataclass
class _Version:
    """What a new version holds: its files (bytes to write, or paths of the parent's files to link) and the
    manifest entries that describe its gallery."""

    files: dict[str, Any]
    entries: dict[str, Any]
    index_sha256: str


def _id_table(rows: Sequence[pd.DataFrame]) -> bytes:
    buf = io.BytesIO()
    pd.concat(rows, ignore_index=True)[list(ID_COLUMNS)].to_parquet(buf, index=False)
    return buf.getvalue()


def _kept_files(src: Path, names: Sequence[str]) -> dict[str, Path]:
    """The parent's files that the new version shares (hard links; the new version is verified against the parent
    manifest's checksums before it takes its name, so a file changed meanwhile is caught)."""
    return {name: src / name for name in names}


def _appended(src: Path, bundle: Bundle, number: int, vectors: np.ndarray | None, added: pd.DataFrame | None,
              thumbs: list[bytes] | None, removed: np.ndarray) -> _Version:
    """The new version as the parent's files + a segment of the added items + the tombstones."""
    import faiss

    from deepmetric.bundle.thumbnails import write_thumbnail_shards
    from deepmetric.index.build import serialize_index

    manifest = bundle.manifest
    segments = declared_segments(manifest)
    shared = [n for n in declared_files(manifest) if n != TOMBSTONES_FILE]
    files: dict[str, Any] = dict(_kept_files(src, shared))
    entries: dict[str, Any] = {}
    if vectors is not None and added is not None:
        index = faiss.IndexFlatIP(int(bundle.index.d))
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        index_name, ids_name = segment_names(number)
        files[index_name], files[ids_name] = serialize_index(index), _id_table([added])
        segments.append({"index": index_name, "ids": ids_name, "items": len(added)})
    entries["segments"] = segments
    if len(removed):
        buf = io.BytesIO()
        pd.DataFrame({"id": removed.astype(np.int64)}).to_parquet(buf, index=False)
        files[TOMBSTONES_FILE] = buf.getvalue()
        entries["tombstones"] = {"file": TOMBSTONES_FILE, "items": len(removed)}
    if thumbs:
        info = dict(manifest["thumbnails"])
        shards = write_thumbnail_shards(thumbs, int(info["shard_items"]), first_row=len(bundle.rows),
                                        first_shard=len(info["files"]))
        files.update(shards)
        info.update(count=len(bundle.rows) + len(thumbs), files=[*info["files"], *sorted(shards)],
                    bytes=int(info.get("bytes", 0)) + sum(len(b) for b in shards.values()))
        entries["thumbnails"] = info
    return _Version(files, entries, manifest["files"][INDEX_FILE])


def _compacted(src: Path, bundle: Bundle, vectors: np.ndarray | None, added: pd.DataFrame | None,
               thumbs: list[bytes] | None, removed: np.ndarray) -> _Version:
    """The new version as one base index of the bundle's factory holding the live items (and the added ones)."""
    import faiss

    from deepmetric.bundle.reader import _read_index
    from deepmetric.bundle.thumbnails import write_thumbnail_shards
    from deepmetric.index.build import serialize_index

    manifest = bundle.manifest
    index = _read_index(src, INDEX_FILE, mmap=False)  # a mapped index cannot be added to
    index.reset()  # keeps the trained quantizer / codebooks
    gone = set(int(i) for i in removed)
    tables, rows = [], []
    try:
        for table, vecs in bundle.live_items():
            keep = ~table["id"].isin(gone).to_numpy()
            if keep.any():
                index.add(np.ascontiguousarray(vecs[keep]))
                tables.append(table[keep])
                rows.append(table.index.to_numpy()[keep])
    except RuntimeError as e:
        raise GalleryError(f"this index type ({type(faiss.downcast_index(bundle.index)).__name__}) cannot give its "
                           f"vectors back, so the gallery cannot be compacted: rebuild it with the index stage "
                           f"({str(e).strip().splitlines()[-1]})") from None
    if vectors is not None and added is not None:
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        tables.append(added)
    index_bytes = serialize_index(index)
    shared = [n for n in (MODEL_FILE, THRESHOLDS_FILE) if n in manifest["files"]]
    files: dict[str, Any] = {**_kept_files(src, shared), INDEX_FILE: index_bytes,
                             IDS_FILE: _id_table(tables)}
    entries: dict[str, Any] = {"segments": None, "tombstones": None}
    if bundle.thumbnails is not None:
        info = dict(manifest["thumbnails"])
        images = [bundle.thumbnails.get(int(r)) for r in np.concatenate(rows or [np.zeros(0, dtype=np.int64)])]
        images += list(thumbs or [])
        shards = write_thumbnail_shards(images, int(info["shard_items"]))
        files.update(shards)
        info.update(count=len(images), files=sorted(shards), bytes=sum(len(b) for b in shards.values()))
        entries["thumbnails"] = info
    return _Version(files, entries, sha256(index_bytes))


def _index_version(version: _Version, manifest: dict[str, Any]) -> str:
    """The gallery's index version: the base index's sha256, with the segments and tombstones folded in."""
    parts = [version.index_sha256]
    for seg in version.entries.get("segments") or []:
        parts.append(_digest(version.files[seg["index"]], manifest, seg["index"]))
    if version.entries.get("tombstones"):
        parts.append(sha256(version.files[TOMBSTONES_FILE]))
    return sha256("+".join(parts).encode())[:12] if len(parts) > 1 else parts[0][:12]


def _digest(content: Any, manifest: dict[str, Any], name: str) -> str:
    return sha256(content) if isinstance(content, bytes) else manifest["files"][name]


def _write_version(dest: Path, link: Path | None, manifest: dict[str, Any], live: int, version: _Version,
                   update: dict[str, Any], next_id: int, created: str | None) -> dict[str, Any]:
    """Seal the new version's manifest (``manifest``: the parent's; ``live``: the new gallery's size), write it
    (verified before it takes its name), repoint ``link``. The caller has let go of the parent bundle, so the
    verification's load of the new version does not hold a second model and id table beside it."""
    lineage = dict(manifest.get("lineage") or {})
    new_manifest = json.loads(json.dumps(manifest))
    for key, value in version.entries.items():
        if value:
            new_manifest[key] = value
        else:
            new_manifest.pop(key, None)
    segments = new_manifest.get("segments", [])
    new_manifest.update({
        "created": created or timestamp(),
        "index_version": _index_version(version, manifest),
        "gallery_size": live,
        # The index stage's recall/latency figures describe the gallery it built, not this one.
        "index_report": {},
        "gallery_update": {**{k: (v[:1000] if isinstance(v, list) else v) for k, v in update.items()},
                           "segments": len(segments), "segment_items": sum(s["items"] for s in segments),
                           "tombstones": int((new_manifest.get("tombstones") or {}).get("items", 0))},
    })
    new_manifest["lineage"] = {**lineage, "index_sha256": version.index_sha256,
                               "gallery_version": int(lineage.get("gallery_version", 0)) + 1,
                               "parent_manifest_sha256": manifest.get("manifest_sha256"), "next_id": next_id}
    new_manifest["files"] = {name: _digest(c, manifest, name) for name, c in version.files.items()}
    new_manifest["sizes"] = {name: len(c) if isinstance(c, bytes) else os.path.getsize(c)
                             for name, c in version.files.items()}
    new_manifest = seal(new_manifest)
    number = new_manifest["lineage"]["gallery_version"]
    folder, text = _beside(link, number, new_manifest["manifest_sha256"]) if link is not None else (dest, None)
    # The new version must load like any bundle before it takes the name.
    write_bundle(folder, new_manifest, version.files, verify=load_bundle, link=True)
    if link is not None:
        point_link(link, text)
    return {"bundle": str(dest), "folder": str(folder), "model_version": new_manifest["model_version"],
            "index_version": new_manifest["index_version"], "gallery_version": number,
            "gallery_size": new_manifest["gallery_size"], "segments": len(segments),
            "tombstones": new_manifest["gallery_update"]["tombstones"],
            "manifest_sha256": new_manifest["manifest_sha256"]}


def update_gallery(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    *,
    add: Sequence[NewItem] = (),
    remove: Sequence[int] = (),
    limits: ImageLimits = ImageLimits(),
    batch_size: int = 32,
    created: str | None = None,
    replace: bool = False,
    allow_duplicates: bool = False,
    compaction: CompactionPolicy | None = CompactionPolicy(),
) -> dict[str, Any]:
    """Write the bundle at ``src`` with ``add`` embedded into its gallery and the ids ``remove`` taken out, as a
    new version at ``dest`` (default: ``src`` itself, replaced atomically; a symlink is repointed at a new folder):
    a new segment and tombstones beside the parent's files, or — when ``compaction`` says it is due (None: never)
    — one compacted base index. ``replace``: an existing bundle folder at ``dest`` may be replaced.
    ``allow_duplicates``: add images that are already in the gallery (or given twice). Returns a summary (the new
    versions, the folder written, the ids given to the added items, the duplicates added, whether it compacted).
    ``limits``: the per-image limits applied to the added images. Raises :class:`GalleryError` /
    :class:`BundleError`; either way nothing was written."""
    if not add and not remove:
        raise GalleryError("nothing to do: give images to add or ids to remove")
    src = Path(src)
    dest = Path(dest) if dest is not None else src
    link = _check_destination(src, dest, replace)
    bundle = load_bundle(src)
    manifest = bundle.manifest
    live_ids = bundle.ids["id"].to_numpy()
    lineage = dict(manifest.get("lineage") or {})

    gone = sorted(set(int(i) for i in remove))
    unknown = sorted(set(gone) - set(live_ids[np.isin(live_ids, gone)].tolist()))
    if unknown:
        twice = sorted(set(unknown) & set(int(i) for i in bundle.removed))
        raise GalleryError(f"no gallery item has id {unknown[:20]} (" + (
            f"{twice[:20]} removed before: tombstones.parquet lists them" if twice
            else "the bundle's ids.parquet and segment-*.parquet list the ids") + ")")
    if len(live_ids) == len(gone) and not add:
        raise GalleryError("removing these ids would leave an empty gallery")

    new_vectors = embed_items(bundle, add, limits, batch_size) if add else None
    duplicates = _duplicates(bundle, add, new_vectors, set(gone)) if add else []
    if duplicates and not allow_duplicates:
        raise GalleryError(f"{describe(duplicates)}: nothing was added; pass --allow-duplicates "
                           "(allow_duplicates=True) to add them anyway")
    next_id = bundle.next_id
    added_ids: list[int] = []
    added = None
    if add:
        first = bundle.rows.drop_duplicates("label")  # a known label keeps its class name
        known = dict(zip(first["label"].astype(int), first["class_name"].astype(str)))
        added_ids = list(range(next_id, next_id + len(add)))
        next_id += len(add)
        added = pd.DataFrame({
            "id": np.array(added_ids, dtype=np.int64),
            "label": np.array([int(it.label) for it in add], dtype=np.int64),
            "class_name": [it.class_name or known.get(int(it.label), str(it.label)) for it in add],
            "path": [it.path or str(it.file) for it in add],
        })
    thumbs = _encoded_thumbnails(manifest["thumbnails"], add, limits) if add and bundle.thumbnails else None
    removed = np.union1d(bundle.removed, np.array(gone, dtype=np.int64)).astype(np.int64)
    segments = declared_segments(manifest)
    number = int(lineage.get("gallery_version", 0)) + 1
    live = len(live_ids) - len(gone) + len(add)
    compact = compaction is not None and compaction.due(
        sum(s["items"] for s in segments) + len(add), len(removed), len(segments) + bool(add), live)
    if compact:
        version = _compacted(src, bundle, new_vectors, added, thumbs, removed)
    else:
        version = _appended(src, bundle, number, new_vectors, added, thumbs, removed)
    del bundle  # the parent's model session and id table: the new version is loaded to be verified
    summary = _write_version(dest, link, manifest, live, version,
                             {"added": len(add), "removed": len(gone), "added_ids": added_ids, "removed_ids": gone,
                              "compacted": compact}, next_id, created)
    return {**summary, "added_ids": added_ids, "removed_ids": gone, "duplicates": duplicates, "compacted": compact}


def compact_gallery(src: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None, *,
                    replace: bool = False, created: str | None = None) -> dict[str, Any]:
    """Write the bundle at ``src`` as a new version whose gallery is one base index of its factory: the segments
    and tombstones folded in (module docstring), ids unchanged. ``dest`` / ``replace`` as for
    :func:`update_gallery`. ``GalleryError`` when there is nothing to compact or the index cannot give its vectors
    back."""
    src = Path(src)
    dest = Path(dest) if dest is not None else src
    link = _check_destination(src, dest, replace)
    bundle = load_bundle(src)
    if not bundle.segments and not len(bundle.removed):
        raise GalleryError(f"{src} has no segments and no removed items: nothing to compact")
    version = _compacted(src, bundle, None, None, None, bundle.removed)
    manifest, live = bundle.manifest, bundle.gallery_size
    next_id = bundle.next_id
    del bundle
    summary = _write_version(dest, link, manifest, live, version, {"added": 0, "removed": 0, "compacted": True},
                             next_id, created)
    return {**summary, "added_ids": [], "removed_ids": [], "duplicates": [], "compacted": True}
