"""Gallery stores outside the bundle: a bundle's gallery in a vector database that can grow past one host.

:mod:`deepmetric.store.milvus` keeps a bundle's gallery (ids, labels, class names, paths, vectors) in a Milvus
collection: milvus-lite (a local ``.db`` folder) on one machine and in the tests, a Milvus standalone or cluster
(``http://host:19530``) in production. :mod:`deepmetric.store.index_params` turns the bundle's faiss index into the
equivalent Milvus index parameters. The bundle stays the unit of release: the collection records the bundle's
``manifest_sha256`` and is refused by a server running another bundle.
"""

from deepmetric.store.milvus import DEFAULT_COLLECTION, GalleryStore, StoreError, export_gallery

__all__ = ["DEFAULT_COLLECTION", "GalleryStore", "StoreError", "export_gallery"]
