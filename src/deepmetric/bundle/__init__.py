"""The deploy bundle: one folder with the ONNX model, the faiss index, the id table, gallery thumbnails and a
checksummed manifest, which the server, the CLI and releases use. One serialization point (as faiss has one):

- :mod:`~deepmetric.bundle.format` — the file names, the manifest's canonical JSON and its ``manifest_sha256``.
- :mod:`~deepmetric.bundle.writer` — the one writer: seals a manifest over its files, writes a bundle folder
  atomically (used by the `bundle` stage, gallery updates and release stamping).
- :mod:`~deepmetric.bundle.reader` — reads and verifies a bundle (:func:`load_bundle`), the :class:`Bundle` served.
- :mod:`~deepmetric.bundle.build` — the `bundle` stage's checks (lineage, the ``bundle.require`` gate) and files.
- :mod:`~deepmetric.bundle.gallery` — a new version with images added (a segment) or items removed (tombstones),
  without retraining, sharing the unchanged files by hard link; compaction back into one index.
- :mod:`~deepmetric.bundle.thumbnails` — the gallery thumbnail shards; :mod:`~deepmetric.bundle.config` — the
  `bundle:` parameters.

Reading a bundle imports neither torch nor Kedro (an inference host has neither).
"""

from deepmetric.bundle.format import BundleError
from deepmetric.bundle.reader import Bundle, load_bundle, read_manifest

__all__ = ["Bundle", "BundleError", "load_bundle", "read_manifest"]
