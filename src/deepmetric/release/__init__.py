"""Releases: publish a deploy bundle to a DVC remote under a git tag, fetch a named release on a host.

- `deepmetric.release.record` — names, paths and the refusal type shared by both sides (no DVC import).
- `deepmetric.release.provenance` — git revision, the bundle stage's dvc.lock hash, the data version.
- `deepmetric.release.publish` — the build side (`deepmetric publish v3`): DVC's Python API + git.
- `deepmetric.release.fetch` — the host side (`deepmetric pull v3`): `dvc.api.DVCFileSystem`, then the bundle's
  own checks. Imports neither torch nor Kedro.

The bundle is written by the one bundle writer (:mod:`deepmetric.bundle.writer`: the stamped copy) and read by
its reader; the commands (`deepmetric publish | pull | releases`) are :mod:`deepmetric.cli.release`.
"""
