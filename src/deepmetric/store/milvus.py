"""A bundle's gallery in a Milvus collection: export it, check it against the served bundle, search it, change it.

Layout. ``deepmetric gallery export`` writes the gallery into a new physical collection
``<name>__<manifest sha256[:12]>_<ms>`` (fields ``id`` INT64 primary key, ``label`` INT64, ``class_name``,
``path``, ``vector`` FLOAT_VECTOR of the bundle's dimension; the index of
:func:`~deepmetric.store.index_params.milvus_index`, metric IP) and only once it holds every item and is loaded
points the alias ``<name>`` at it: a reader (the server) always sees a complete gallery, an export that fails
leaves nothing behind (its collection is dropped) and the previous one serving. Replacing an existing alias needs
``replace``; the collection it pointed at is dropped after the switch.

Collection properties (``deepmetric.*``) record the bundle's ``manifest_sha256``, model version and model file
sha256, the dimension, the index and the next free id: a server running another bundle refuses the collection
(:meth:`GalleryStore.check`).

Consistency level ``Strong`` on the collection and on every read: a search or a count after ``gallery add|remove``
sees the change (read-your-writes), at the cost of waiting for the latest timestamp on a cluster.

Connection: ``uri`` is a milvus-lite folder ending in ``.db`` (in-process, one process at a time) or
``http(s)://host:19530``; a token (``user:password`` or an API key) comes from $DEEPMETRIC_MILVUS_TOKEN, never
from the command line. Every call has a deadline (``timeout``); any failure to reach Milvus is a
:class:`StoreError` of kind ``unreachable`` naming the URI.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deepmetric.store.index_params import MilvusIndex, UnsupportedIndex, milvus_index

__all__ = ["CONSISTENCY", "DEFAULT_COLLECTION", "EXIT", "TOKEN_ENV", "GalleryStore", "StoreError", "export_gallery"]

DEFAULT_COLLECTION = "deepmetric_gallery"
TOKEN_ENV = "DEEPMETRIC_MILVUS_TOKEN"
CONSISTENCY = "Strong"
INSERT_BATCH = 1000          # rows per insert/upsert call: 1000 x 512-d float32 = 2 MB, far below gRPC's 64 MB
TEXT_MAX = {"class_name": 1024, "path": 4096}
FORMAT = "deepmetric-gallery/1"
_P = "deepmetric."
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,190}$")

# Exit statuses (as deepmetric.cli.common's and deepmetric.release.record's).
EXIT = {
    "refused": 2,       # a collection built for another bundle (manifest, model, dimension)
    "bad_input": 3,     # a bad name, an existing collection without --replace, unknown / already removed ids
    "unreachable": 5,   # Milvus cannot be reached, or the milvus-lite folder cannot be opened
}


class StoreError(Exception):
    """A refused or failed store operation. ``kind`` is one of :data:`EXIT`'s keys; the message says what."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in EXIT:
            raise ValueError(f"unknown StoreError kind {kind!r}")
        self.kind = kind
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return EXIT[self.kind]


def _reason(e: Exception) -> str:
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    return message.strip().splitlines()[0]


def _connect(uri: str, timeout: float) -> Any:
    """A MilvusClient on ``uri``; StoreError when it cannot be reached."""
    from pymilvus import MilvusClient

    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # failures are reported once, as a StoreError
    token = os.environ.get(TOKEN_ENV, "")
    if not uri.endswith(".db") and not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        raise StoreError("bad_input", f"Milvus URI {uri!r} is neither a milvus-lite folder ending in .db nor "
                         "http(s)://host:port")
    if uri.endswith(".db") and not os.path.isdir(os.path.dirname(os.path.abspath(uri))):
        raise StoreError("unreachable", f"milvus-lite {uri}: its parent folder does not exist")
    try:
        # dedicated: a connection of its own, so that dropping it after a failure (GalleryStore) and connecting
        # again does not hand back a shared channel that pymilvus closed while Milvus was away
        return MilvusClient(uri=uri, token=token, timeout=timeout, dedicated=True)
    except Exception as e:  # pymilvus raises MilvusException, ConnectionConfigException, grpc errors
        hint = (" (a milvus-lite folder is opened by one process at a time: serve it with `milvus-lite server "
                "--data-dir ...` and use its http:// URI from several)" if uri.endswith(".db") else "")
        raise StoreError("unreachable", f"cannot reach Milvus at {uri}: {_reason(e)}{hint}") from None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        raise StoreError("bad_input", f"collection name {name!r} is not valid: letters, digits and single '_', "
                         "starting with a letter or '_' (Milvus' rule; '__' separates the exported versions)")
    return name


def bundle_properties(bundle: Any, index: MilvusIndex, next_id: int) -> dict[str, str]:
    """The collection properties recording which bundle the gallery belongs to."""
    m = bundle.manifest
    return {_P + "format": FORMAT, _P + "manifest_sha256": str(m.get("manifest_sha256")),
            _P + "model_version": str(m.get("model_version")), _P + "model_sha256": str(m["files"]["model.onnx"]),
            _P + "dim": str(bundle.dim), _P + "index": json.dumps(index.as_dict(), sort_keys=True),
            _P + "next_id": str(next_id)}


def _chunks(bundle: Any, batch: int) -> Iterator[list[dict[str, Any]]]:
    """The bundle's live gallery items (base and segments, no removed ones) as insert rows, ``batch`` at a time
    (vectors read back from the faiss indexes one batch at a time: bounded memory for any gallery size)."""
    for part, vectors in bundle.live_items(batch):
        yield [{"id": int(i), "label": int(lab), "class_name": str(c), "path": str(p), "vector": v}
               for i, lab, c, p, v in zip(part["id"], part["label"], part["class_name"], part["path"], vectors)]


def _schema(client: Any, dim: int) -> Any:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("label", DataType.INT64)
    schema.add_field("class_name", DataType.VARCHAR, max_length=TEXT_MAX["class_name"])
    schema.add_field("path", DataType.VARCHAR, max_length=TEXT_MAX["path"])
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    return schema


def export_gallery(bundle: Any, uri: str, collection: str = DEFAULT_COLLECTION, *, replace: bool = False,
                   batch: int = INSERT_BATCH, timeout: float = 60.0) -> dict[str, Any]:
    """Write ``bundle``'s gallery into collection (alias) ``collection`` at ``uri``; returns a summary. Without
    ``replace`` an existing one is refused (StoreError ``bad_input``) and left as it is."""
    _check_name(collection)
    try:
        index = milvus_index(bundle.index)
    except UnsupportedIndex as e:
        raise StoreError("bad_input", str(e)) from None
    for col, limit in TEXT_MAX.items():
        longest = int(bundle.ids[col].astype(str).str.encode("utf-8").str.len().max()) if len(bundle.ids) else 0
        if longest > limit:
            raise StoreError("bad_input", f"ids.parquet column {col!r} has a value of {longest} bytes (UTF-8); the "
                             f"collection holds at most {limit}")
    client = _connect(uri, timeout)
    try:
        return _export(client, bundle, uri, collection, index, replace, batch, timeout)
    except StoreError:
        raise
    except Exception as e:  # Milvus went away mid-way (the new collection, if any, was dropped or is unreachable)
        raise StoreError("unreachable", f"export to {uri} failed, nothing changed: {_reason(e)}") from None
    finally:
        client.close()


def _export(client: Any, bundle: Any, uri: str, collection: str, index: MilvusIndex, replace: bool, batch: int,
            timeout: float) -> dict[str, Any]:
    sha = str(bundle.manifest.get("manifest_sha256"))
    aliases = set(client.list_aliases(timeout=timeout).get("aliases", []))
    collections = set(client.list_collections(timeout=timeout))
    previous = None
    if collection in collections:
        raise StoreError("bad_input", f"{uri} has a collection named {collection!r} that deepmetric did not export "
                         "(not an alias): choose another --collection")
    if collection in aliases:
        previous = client.describe_alias(collection, timeout=timeout)["collection_name"]
        props = client.describe_collection(collection, timeout=timeout).get("properties", {})
        if props.get(_P + "format") != FORMAT:
            raise StoreError("bad_input", f"the alias {collection!r} at {uri} names collection {previous!r}, which "
                             "deepmetric did not export: choose another --collection")
        if not replace:
            raise StoreError("bad_input", f"collection {collection!r} already exists at {uri} (bundle manifest "
                             f"{str(props.get(_P + 'manifest_sha256'))[:12]}, model "
                             f"{props.get(_P + 'model_version')}): give --replace to replace it")
    physical = f"{collection}__{sha[:12]}_{int(time.time() * 1000)}"
    next_id = bundle.next_id
    t0 = time.perf_counter()
    try:
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=index.index_type, metric_type=index.metric_type,
                               params=index.params)
        client.create_collection(physical, schema=_schema(client, bundle.dim), index_params=index_params,
                                 properties=bundle_properties(bundle, index, next_id),
                                 consistency_level=CONSISTENCY, timeout=timeout)
        written = 0
        for rows in _chunks(bundle, batch):
            written += int(client.insert(physical, rows, timeout=timeout)["insert_count"])
        client.flush(physical, timeout=timeout)
        client.load_collection(physical, timeout=timeout)
        count = _count(client, physical, timeout)
        if count != bundle.gallery_size:
            raise StoreError("unreachable", f"collection {physical} holds {count} items after the export, the "
                             f"bundle's gallery {bundle.gallery_size}")
        if previous is None:
            client.create_alias(physical, collection, timeout=timeout)
        else:
            client.alter_alias(physical, collection, timeout=timeout)
    except BaseException:
        try:
            client.drop_collection(physical, timeout=timeout)
        except Exception:  # unreachable now: the half-written collection has no alias, nothing reads it
            pass
        raise
    if previous is not None:
        try:
            client.drop_collection(previous, timeout=timeout)
        except Exception:
            pass  # the alias already points at the new one; the old collection is only disk space
    return {"uri": uri, "collection": collection, "physical_collection": physical, "replaced": previous,
            "items": written, "dim": bundle.dim, "index": index.as_dict(), "manifest_sha256": sha,
            "model_version": bundle.manifest.get("model_version"), "consistency_level": CONSISTENCY,
            "seconds": round(time.perf_counter() - t0, 3)}


def _count(client: Any, collection: str, timeout: float) -> int:
    rows = client.query(collection, filter="", output_fields=["count(*)"], consistency_level=CONSISTENCY,
                        timeout=timeout)
    return int(rows[0]["count(*)"])


class GalleryStore:
    """An exported gallery collection, opened for the server and for ``gallery add|remove``: search, count,
    upsert, delete. Every Milvus failure is a :class:`StoreError` (``unreachable``) naming the URI."""

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION, *, timeout: float = 10.0) -> None:
        self.uri = uri
        self.collection = _check_name(collection)
        self.timeout = timeout
        self._client: Any = _connect(uri, timeout)
        self._lock = threading.Lock()  # the server's threads share one store: one reconnection at a time
        self._loaded = False  # loaded for search (by check): loaded again after a reconnection
        self._search: dict[str, Any] = {}

    @property
    def client(self) -> Any:
        """The Milvus client, connected again after a failure (Milvus came back, or its address answers again)."""
        with self._lock:
            if self._client is None:
                client = _connect(self.uri, self.timeout)
                if self._loaded:  # a restarted Milvus (milvus-lite, a standalone) may come back with it released
                    try:
                        client.load_collection(self.collection, timeout=self.timeout)
                    except Exception:
                        client.close()
                        raise
                self._client = client
            return self._client

    def _call(self, what: str, method: Any, *args, **kwargs) -> Any:
        """``client.<method>(*args, timeout=…, **kwargs)`` (``method``: a client method's name, or a function of
        the client and those arguments); any failure is a StoreError (``unreachable``) and drops the connection, so
        that the next call connects afresh."""
        try:
            client = self.client
            fn = getattr(client, method) if isinstance(method, str) else functools.partial(method, client)
            return fn(*args, timeout=self.timeout, **kwargs)
        except StoreError:
            raise
        except Exception as e:
            self.close()
            raise StoreError("unreachable", f"Milvus at {self.uri}, collection {self.collection!r}: {what} "
                             f"failed: {_reason(e)}") from None

    def properties(self) -> dict[str, str]:
        """The collection's ``deepmetric.*`` properties (StoreError ``bad_input`` when there is no such
        collection)."""
        if not self._call("has_collection", "has_collection", self.collection):
            raise StoreError("bad_input", f"no collection {self.collection!r} at {self.uri}: write it first with "
                             "`deepmetric gallery export --bundle B --to URI`")
        props = self._call("describe_collection", "describe_collection", self.collection).get("properties", {})
        if props.get(_P + "format") != FORMAT:
            raise StoreError("refused", f"collection {self.collection!r} at {self.uri} was not written by "
                             f"`deepmetric gallery export` (no {_P}format = {FORMAT})")
        return {k[len(_P):]: v for k, v in props.items() if k.startswith(_P)}

    def check(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Refuse (StoreError ``refused``) a collection built for another bundle than the one of ``manifest`` (a
        verified bundle's); load it for search. Returns its description (properties + item count)."""
        props = self.properties()
        m = manifest
        if props.get("dim") != str(m.get("embedding_dim")):
            raise StoreError("refused", f"collection {self.collection!r} at {self.uri} holds {props.get('dim')}-d "
                             f"vectors; the bundle's model gives {m.get('embedding_dim')}-d")
        if props.get("manifest_sha256") != m.get("manifest_sha256"):
            raise StoreError("refused", f"collection {self.collection!r} at {self.uri} was exported from bundle "
                             f"manifest {str(props.get('manifest_sha256'))[:12]} (model {props.get('model_version')}), "
                             f"not from this bundle ({str(m.get('manifest_sha256'))[:12]}, model "
                             f"{m.get('model_version')}): export this bundle's gallery to it "
                             "(`deepmetric gallery export --replace`)")
        self._call("load_collection", "load_collection", self.collection)
        self._loaded = True
        self._search = json.loads(props.get("index", "{}")).get("search", {})
        return {**props, "items": self.count()}

    def count(self) -> int:
        return self._call("count", _count, self.collection)

    def search(self, embeddings: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Per query, the ``k`` nearest items as the faiss path gives them (id, label, class_name, path,
        score = inner product)."""
        hits = self._call("search", "search", self.collection,
                          data=np.ascontiguousarray(embeddings, dtype=np.float32), limit=k,
                          output_fields=["label", "class_name", "path"],
                          search_params={"metric_type": "IP", "params": self._search},
                          consistency_level=CONSISTENCY)
        return [[{"id": int(h["id"]), "label": int(h["entity"]["label"]), "class_name": str(h["entity"]["class_name"]),
                  "path": str(h["entity"]["path"]), "score": float(h["distance"])} for h in row] for row in hits]

    def existing(self, ids: Sequence[int]) -> set[int]:
        """The ``ids`` the collection holds."""
        rows = self._call("get", "get", self.collection, ids=[int(i) for i in ids], output_fields=["id"],
                          consistency_level=CONSISTENCY)
        return {int(r["id"]) for r in rows}

    def add(self, labels: Sequence[int], class_names: Sequence[str], paths: Sequence[str],
            vectors: np.ndarray) -> list[int]:
        """Upsert new items with fresh ids (from the ``next_id`` property on; never reused) and return the ids."""
        start = int(self.properties()["next_id"])
        new_ids = list(range(start, start + len(vectors)))
        # Reserve the ids first: an add that fails half-way has used them, and none is ever given out twice.
        self._call("alter_collection_properties", "alter_collection_properties", self.collection,
                   properties={_P + "next_id": str(start + len(vectors))})
        rows = [{"id": i, "label": int(lab), "class_name": str(c), "path": str(p), "vector": v}
                for i, lab, c, p, v in zip(new_ids, labels, class_names, paths,
                                           np.asarray(vectors, dtype=np.float32))]
        for s in range(0, len(rows), INSERT_BATCH):
            self._call("upsert", "upsert", self.collection, rows[s : s + INSERT_BATCH])
        return new_ids

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Delete items by id; an id the collection does not hold (never there, or removed already) refuses the
        whole call (StoreError ``bad_input``), nothing deleted."""
        wanted = sorted({int(i) for i in ids})
        missing = sorted(set(wanted) - self.existing(wanted))
        if missing:
            raise StoreError("bad_input", f"collection {self.collection!r} at {self.uri} holds no item with id "
                             f"{', '.join(map(str, missing))} (never added, or removed already); nothing removed")
        self._call("delete", "delete", self.collection, ids=wanted)
        return wanted

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
