"""Live gallery updates: add images to a bundle's gallery, or remove items, without retraining.

``deepmetric gallery add|remove`` (:func:`update_gallery`) reads a verified bundle, embeds the new images with the
bundle's own ONNX model through the evaluation transform (the code the index stage and the server use, with the
same per-image bounds), and writes a new bundle version: same model and match thresholds (they belong to the
model), new ``index.faiss`` / ``ids.parquet`` / thumbnails, a manifest with fresh checksums, ``lineage.gallery_version`` + 1 and the parent manifest's sha256.
The new version is written by the one bundle writer (:func:`~deepmetric.bundle.writer.write_bundle`) and verified
like any bundle (:func:`~deepmetric.bundle.reader.load_bundle`) *before* it is renamed into place, so a failed
update leaves the destination as it was.

Where the new version goes: in place (``dest`` omitted, or the bundle itself), or to ``dest`` when nothing is there.
An existing ``dest`` is replaced only when it is a bundle folder (its manifest.json and the files it lists, nothing
else) and ``replace`` is given; anything else there (a user's folder, a file) is refused and left untouched. A
symlink (``releases/current``, as ``deepmetric pull`` makes it) is never replaced by a folder: the new version goes
to a new folder beside the link's target (``v3`` → ``v3-g1``, named after the new ``gallery_version``) and the link
is repointed at it atomically, so the old version stays for rollback.

An added image whose embedding equals a gallery item's (the same picture) or another added image's is refused
unless ``allow_duplicates``; then it is added and listed in the summary's ``duplicates``.

Ids are stable: the id table's ``id`` column names an item for as long as it is in the gallery (faiss row numbers
may shift); new items get ids from ``lineage.next_id`` on, and a removed id is never given out again. Removal
rebuilds the index without the removed rows: the remaining vectors are read back from the index
(``reconstruct_n``, exact for Flat, HNSW*,Flat and IVF*,Flat; for PQ-coded indexes the decoded vectors are
encoded again) into a copy of it emptied with ``reset()``, which keeps any trained quantizer.
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
                                     THRESHOLDS_FILE, BundleError, sha256, timestamp)
from deepmetric.bundle.reader import Bundle, load_bundle
from deepmetric.bundle.writer import point_link, seal, write_bundle
from deepmetric.data.images import ImageLimits

__all__ = ["GalleryError", "NewItem", "describe", "embed_items", "update_gallery"]


class GalleryError(ValueError):
    """An update that cannot be made (unknown id, empty result, unreadable image); nothing was written."""


@dataclass(frozen=True)
class NewItem:
    """An image to add: its file (read now), its label and class name, and the path recorded in the id table."""

    file: str
    label: int
    class_name: str | None = None
    path: str | None = None


def _vectors(index) -> np.ndarray:
    """Every vector of ``index`` in row order (decoded codes for compressed indexes)."""
    import faiss

    n = int(index.ntotal)
    if n == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    from deepmetric.index.build import make_reconstructible

    make_reconstructible(index)
    try:
        return np.ascontiguousarray(index.reconstruct_n(0, n), dtype=np.float32)
    except RuntimeError as e:
        raise GalleryError(f"this index type ({type(faiss.downcast_index(index)).__name__}) cannot give its "
                           f"vectors back for a rebuild, so items cannot be removed: rebuild the gallery with the "
                           f"index stage ({str(e).strip().splitlines()[-1]})") from None


def _emptied(index):
    import faiss

    fresh = faiss.clone_index(index)
    fresh.reset()
    return fresh


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


def _thumbnail_files(bundle: Bundle, keep_rows: np.ndarray, items: Sequence[NewItem],
                     limits: ImageLimits) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The thumbnail shards of the new gallery (kept rows' thumbnails as they are, new ones encoded)."""
    if bundle.thumbnails is None:
        return None
    from deepmetric.data.images import ImageDecodeError, open_image
    from deepmetric.bundle.thumbnails import encode_thumbnail, write_thumbnail_shards

    info = dict(bundle.manifest["thumbnails"])
    images = [bundle.thumbnails.get(int(r)) for r in keep_rows]
    for it in items:
        try:
            img = open_image(it.file, limits=limits)
        except ImageDecodeError as e:
            raise GalleryError(str(e)) from None
        images.append(encode_thumbnail(img, int(info["size"]), str(info["format"]), int(info.get("quality", 80))))
    shards = write_thumbnail_shards(images, int(info["shard_items"]))
    info.update(count=len(images), files=sorted(shards), bytes=sum(len(b) for b in shards.values()))
    return info, shards


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


def _duplicates(bundle: Bundle, items: Sequence[NewItem], vectors: np.ndarray,
                removed: set[int]) -> list[dict[str, Any]]:
    """Added images that are the same picture as a gallery item (kept, not removed now) or as an earlier added
    image: their embeddings' cosine similarity is at least :data:`SAME_IMAGE`. Exact for Flat, HNSW*,Flat and
    IVF*,Flat indexes; PQ-coded ones store approximate vectors, so a duplicate of a gallery item may go unseen."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    found: dict[int, dict[str, Any]] = {}
    index = bundle.index
    k = min(int(index.ntotal), len(removed) + 1)
    if k:
        scores, rows = index.search(vectors, k)
        inner = index.metric_type == faiss.METRIC_INNER_PRODUCT
        same = (lambda s: s >= SAME_IMAGE) if inner else (lambda s: s <= 2 * (1 - SAME_IMAGE))
        item_ids = bundle.ids["id"].to_numpy()
        for i, (srow, rrow) in enumerate(zip(scores, rows)):
            hits = [(float(sc), int(item_ids[r])) for sc, r in zip(srow, rrow)
                    if r >= 0 and int(item_ids[r]) not in removed]
            if hits and same(hits[0][0]):
                found[i] = {"image": items[i].path or str(items[i].file), "same_as_id": hits[0][1]}
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
) -> dict[str, Any]:
    """Write the bundle at ``src`` with ``add`` embedded into its gallery and the ids ``remove`` taken out, as a
    new version at ``dest`` (default: ``src`` itself, replaced atomically; a symlink is repointed at a new folder).
    ``replace``: an existing bundle folder at ``dest`` may be replaced. ``allow_duplicates``: add images that are
    already in the gallery (or given twice). Returns a summary (the new versions, the folder written, the ids given
    to the added items, the duplicates added). ``limits``: the per-image limits applied to the added images.
    Raises :class:`GalleryError` / :class:`BundleError`; either way nothing was written."""
    from deepmetric.index.build import serialize_index

    if not add and not remove:
        raise GalleryError("nothing to do: give images to add or ids to remove")
    src = Path(src)
    dest = Path(dest) if dest is not None else src
    link = _check_destination(src, dest, replace)
    bundle = load_bundle(src, mmap=False)  # its index is cloned and added to: a mapped one cannot be
    manifest = bundle.manifest
    ids = bundle.ids[list(ID_COLUMNS)].reset_index(drop=True)
    id_values = ids["id"].to_numpy()
    lineage = dict(manifest.get("lineage") or {})

    gone = sorted(set(int(i) for i in remove))
    unknown = sorted(set(gone) - set(int(i) for i in id_values))
    if unknown:
        raise GalleryError(f"no gallery item has id {unknown[:20]} (the bundle's ids.parquet lists the ids)")
    keep = ~np.isin(id_values, gone)
    if not keep.any() and not add:
        raise GalleryError("removing these ids would leave an empty gallery")

    new_vectors = embed_items(bundle, add, limits, batch_size) if add else None
    duplicates = _duplicates(bundle, add, new_vectors, set(gone)) if add else []
    if duplicates and not allow_duplicates:
        raise GalleryError(f"{describe(duplicates)}: nothing was added; pass --allow-duplicates "
                           "(allow_duplicates=True) to add them anyway")
    if gone:
        index = _emptied(bundle.index)
        kept = _vectors(bundle.index)[keep]
        if len(kept):
            index.add(kept)
    else:
        import faiss

        index = faiss.clone_index(bundle.index)
    next_id = int(lineage.get("next_id", int(id_values.max()) + 1 if len(id_values) else 0))
    added_ids: list[int] = []
    table = ids[keep]
    if add:
        index.add(new_vectors)
        known = dict(zip(ids["label"].astype(int), ids["class_name"].astype(str)))
        added_ids = list(range(next_id, next_id + len(add)))
        next_id += len(add)
        table = pd.concat([table, pd.DataFrame({
            "id": np.array(added_ids, dtype=np.int64),
            "label": np.array([int(it.label) for it in add], dtype=np.int64),
            "class_name": [it.class_name or known.get(int(it.label), str(it.label)) for it in add],
            "path": [it.path or str(it.file) for it in add],
        })], ignore_index=True)
    table = table.reset_index(drop=True)
    if int(index.ntotal) != len(table):
        raise GalleryError(f"internal: {index.ntotal} index vectors for {len(table)} ids")

    index_bytes = serialize_index(index)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    files = {MODEL_FILE: (src / MODEL_FILE).read_bytes(), INDEX_FILE: index_bytes, IDS_FILE: buf.getvalue()}
    if files[MODEL_FILE] and sha256(files[MODEL_FILE]) != manifest["files"][MODEL_FILE]:
        raise BundleError(MODEL_FILE, "changed while the gallery was being updated")
    if THRESHOLDS_FILE in manifest["files"]:  # the match thresholds belong to the model: the new version keeps them
        files[THRESHOLDS_FILE] = (src / THRESHOLDS_FILE).read_bytes()
        if sha256(files[THRESHOLDS_FILE]) != manifest["files"][THRESHOLDS_FILE]:
            raise BundleError(THRESHOLDS_FILE, "changed while the gallery was being updated")
    new_manifest = json.loads(json.dumps(manifest))
    thumbs = _thumbnail_files(bundle, np.flatnonzero(keep), add, limits)
    if thumbs is not None:
        new_manifest["thumbnails"] = thumbs[0]
        files.update(thumbs[1])
    new_manifest.update({
        "created": created or timestamp(),
        "index_version": sha256(index_bytes)[:12],
        "gallery_size": int(index.ntotal),
        # The index stage's recall/latency figures describe the gallery it built, not this one.
        "index_report": {},
        "gallery_update": {"added": len(add), "removed": len(gone), "added_ids": added_ids[:1000],
                           "removed_ids": gone[:1000]},
    })
    new_manifest["lineage"] = {**lineage, "index_sha256": sha256(index_bytes),
                               "gallery_version": int(lineage.get("gallery_version", 0)) + 1,
                               "parent_manifest_sha256": manifest.get("manifest_sha256"), "next_id": next_id}
    new_manifest = seal(new_manifest, files)
    version = new_manifest["lineage"]["gallery_version"]
    folder, text = _beside(link, version, new_manifest["manifest_sha256"]) if link is not None else (dest, None)
    # The new version must load like any bundle before it takes the name.
    write_bundle(folder, new_manifest, files, verify=load_bundle)
    if link is not None:
        point_link(link, text)
    return {"bundle": str(dest), "folder": str(folder), "model_version": new_manifest["model_version"],
            "index_version": new_manifest["index_version"], "gallery_version": version,
            "gallery_size": new_manifest["gallery_size"], "added_ids": added_ids, "removed_ids": gone,
            "duplicates": duplicates, "manifest_sha256": new_manifest["manifest_sha256"]}
