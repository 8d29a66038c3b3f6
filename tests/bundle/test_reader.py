"""Bundle verification (`load_bundle`, `read_manifest`): checksums of every file, dimensions, lineage, refusals
naming the file."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from deepmetric.bundle import BundleError, load_bundle, read_manifest
from deepmetric.bundle.format import MANIFEST_FILE, PAYLOAD_FILES, manifest_sha256, sha256
from tests.deploy_fixtures import EMBED_DIM, onnx_model
from tests.server_fixtures import deepmetric

FILES = ["model.onnx", "index.faiss", "ids.parquet", "manifest.json", "thumbnails-00000.parquet"]


@pytest.fixture(scope="module")
def built(deploy_data, deploy_bundle):
    """The session's default bundle (tests/conftest.py; only read: tests alter copies)."""
    tmp, root, manifest = deploy_data
    return tmp, root, manifest, onnx_model(), deploy_bundle[0]


def test_bundle_loads_and_manifest_is_complete(built):
    *_, bundle_dir = built
    b = load_bundle(bundle_dir)
    m = b.manifest
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(FILES)
    for name in FILES[:3] + FILES[4:]:
        assert m["files"][name] == sha256((bundle_dir / name).read_bytes())
    assert m["model_version"] == m["files"]["model.onnx"][:12] and m["index_version"] == m["files"]["index.faiss"][:12]
    assert m["embedding_dim"] == EMBED_DIM == b.dim and m["metric"] == "inner_product" and m["normalized"]
    assert m["input"]["layout"] == "NHWC" and m["input"]["crop"] == 32
    assert m["index_factory"] == "Flat" and m["gallery_size"] == b.gallery_size == 36
    assert m["accepted_on"] == {"recall@1": 0.5, "map@r": 0.25, "nmi": 0.4}
    assert {"onnxruntime", "faiss", "onnx", "deepmetric"} <= set(m["versions"])
    ids = pd.read_parquet(bundle_dir / "ids.parquet")
    assert list(ids.columns) == ["id", "label", "class_name", "path"]


@pytest.mark.parametrize("name", FILES)
def test_one_changed_byte_in_any_file_is_refused(built, tmp_path, name):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / name).read_bytes())
    pos = len(data) // 2
    data[pos] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert err.value.file == name, str(err.value)
    if name != "model.onnx":
        return
    # The CLI refuses such a bundle with the message and a non-zero exit status (once: it is slow to start).
    proc = deepmetric("info", "--bundle", str(copy))
    assert proc.returncode == 2 and name in proc.stderr and "bundle refused" in proc.stderr


def test_missing_file_and_not_a_bundle(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "index.faiss").unlink()
    with pytest.raises(BundleError, match="index.faiss: missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")


def _rewrite_manifest(folder, **changes):
    m = json.loads((folder / MANIFEST_FILE).read_text())
    m.update(changes)
    thumbs = tuple(m["thumbnails"]["files"]) if m.get("thumbnails") else ()
    m["files"] = {n: sha256((folder / n).read_bytes()) for n in PAYLOAD_FILES + thumbs}
    m["manifest_sha256"] = manifest_sha256(m)
    (folder / MANIFEST_FILE).write_text(json.dumps(m))


def test_model_and_index_dimension_mismatch_is_refused(built, tmp_path):
    """A consistently re-signed bundle whose model (dim 8) does not fit its index (dim 16)."""
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "model.onnx").write_bytes(onnx_model(8))
    _rewrite_manifest(copy)
    with pytest.raises(BundleError, match="model.onnx: model output dimension 8 != index dimension 16"):
        load_bundle(copy)
    _rewrite_manifest(copy, embedding_dim=8)
    with pytest.raises(BundleError, match="dimension"):
        load_bundle(copy)


def test_gallery_size_mismatch_is_refused(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    ids = pd.read_parquet(copy / "ids.parquet").iloc[:-1]
    ids.to_parquet(copy / "ids.parquet", index=False)
    _rewrite_manifest(copy)
    with pytest.raises(BundleError, match="ids.parquet: 35 ids, index holds 36"):
        load_bundle(copy)


def test_load_refuses_a_swapped_model_or_foreign_metrics(built, tmp_path):
    """A consistently re-signed bundle with another model of the same dimension: the lineage says the index was
    built by the old one, and `info` refuses it."""
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "model.onnx").write_bytes(onnx_model(seed=1))
    _rewrite_manifest(copy)
    with pytest.raises(BundleError, match=r"index.faiss: was built by model \w{12}, but the bundle's model.onnx is"):
        load_bundle(copy)
    shutil.rmtree(copy)
    shutil.copytree(bundle_dir, copy)
    m = json.loads((copy / MANIFEST_FILE).read_text())
    _rewrite_manifest(copy, lineage={**m["lineage"], "metrics_weights_sha256": "0" * 64})
    with pytest.raises(BundleError, match="manifest.json: accepted_on holds the metrics of weights 000000000000"):
        load_bundle(copy)
    _rewrite_manifest(copy, lineage=None)
    with pytest.raises(BundleError, match="has no 'lineage'"):
        load_bundle(copy)


def test_read_manifest_rejects_edits(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    m = json.loads((copy / MANIFEST_FILE).read_text())
    m["gallery_size"] = 999
    (copy / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest_sha256"):
        read_manifest(copy)


def test_a_bundle_without_thresholds_loads_and_has_no_operating_point(built):
    b = load_bundle(built[-1])
    assert b.thresholds is None and "thresholds" not in b.manifest["files"]
    assert b.operating_point(None) is None
    with pytest.raises(ValueError, match="fmr 0.01 asked, but no thresholds in this bundle: match omitted"):
        b.operating_point(0.01)


def test_thresholds_are_verified_like_every_file(thresholds_bundle, tmp_path):
    """thresholds.json: its sha256 is checked, a declared one must be there, and one that is sealed into the
    manifest but breaks the contract is refused naming it."""
    from deepmetric.bundle.writer import seal
    from tests.deploy_fixtures import FIXTURE_THRESHOLDS as THRESHOLDS

    src = thresholds_bundle[0]
    b = load_bundle(src)
    assert b.thresholds is not None and b.thresholds.content == THRESHOLDS
    assert b.operating_point(0.001) == {"fmr": 0.001, "threshold": 0.99}

    changed = tmp_path / "changed"
    shutil.copytree(src, changed)
    (changed / "thresholds.json").write_text((changed / "thresholds.json").read_text().replace("0.99", "0.98"))
    with pytest.raises(BundleError, match="thresholds.json: sha256 .* does not match the manifest"):
        load_bundle(changed)
    (changed / "thresholds.json").unlink()
    with pytest.raises(BundleError, match="thresholds.json: missing in"):
        load_bundle(changed)

    resealed = tmp_path / "resealed"
    shutil.copytree(src, resealed)
    bad = json.dumps({**THRESHOLDS, "operating_points": THRESHOLDS["operating_points"][::-1]}).encode()
    (resealed / "thresholds.json").write_bytes(bad)
    m = json.loads((resealed / MANIFEST_FILE).read_text())
    m["files"]["thresholds.json"], m["sizes"]["thresholds.json"] = sha256(bad), len(bad)
    (resealed / MANIFEST_FILE).write_text(json.dumps(seal(m)))
    with pytest.raises(BundleError, match=r"thresholds.json: operating points must be sorted by decreasing fmr"):
        load_bundle(resealed)
    m["thresholds"] = {"file": "other.json"}
    (resealed / MANIFEST_FILE).write_text(json.dumps(seal(m)))
    with pytest.raises(BundleError, match=r"manifest.json: 'thresholds' must be \{\"file\": \"thresholds.json\"\}"):
        read_manifest(resealed)


@pytest.mark.parametrize("index", [{"factory": "Flat"}, {"factory": "IVF4,Flat", "search": {"nprobe": 4}}])
def test_query_expansion_is_the_evaluations_and_keeps_the_cosine(deploy_data, tmp_path, index):
    """rerank="qe": the neighbours of evaluation.rerank.query_expansion (n=2, alpha=3) over the bundle's own
    vectors, each with its expanded score as qe_score and the plain cosine as score; an inverted-file index
    (probing every list here: exact) gets what it needs to give its vectors back."""
    import numpy as np

    from deepmetric.bundle.reader import QE_ALPHA, QE_N
    from deepmetric.data.transforms import load_eval_image
    from deepmetric.evaluation.rerank import query_expansion
    from tests.deploy_fixtures import make_bundle

    _, root, manifest = deploy_data
    b = load_bundle(make_bundle(tmp_path / "b", root, manifest, onnx_model(), index=index,
                                bundle={"thumbnails": {"enabled": False}}))
    train = manifest[manifest["split"] == "train"]["path"]
    q = b.embed(np.stack([load_eval_image(root / p, b.spec) for p in train.iloc[:3]]))
    gallery = b.vectors(np.arange(b.gallery_size))
    want_scores, want_rows = query_expansion(q, gallery, 6, n=QE_N, alpha=QE_ALPHA)
    got = b.search(q, 6, rerank="qe")
    plain = b.search(q, 6)
    assert [[h["id"] for h in hits] for hits in got] == want_rows.tolist()
    for hits, ws, qv in zip(got, want_scores, q):
        np.testing.assert_allclose([h["qe_score"] for h in hits], ws, atol=1e-5)
        np.testing.assert_allclose([h["score"] for h in hits], gallery[[h["id"] for h in hits]] @ qv, atol=1e-5)
    assert [[h["id"] for h in hits] for hits in got] != [[h["id"] for h in hits] for hits in plain]  # it re-orders
    assert all("qe_score" not in h for hits in plain for h in hits)
    assert len(b.search(q, 1, rerank="qe")[0]) == 1  # k below the expansion's n: the first search takes n
    with pytest.raises(ValueError, match=r"rerank must be one of \['qe'\], got 'dba'"):
        b.search(q, 3, rerank="dba")


def _mapped(path) -> bool:
    """Whether this process maps ``path`` (a line of /proc/self/maps names it)."""
    return str(path.resolve()) in open("/proc/self/maps").read()


def test_the_index_is_memory_mapped_and_searches_as_the_copied_one(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    mapped, copied = load_bundle(copy), load_bundle(copy, mmap=False)
    assert _mapped(copy / "index.faiss")
    q = copied.index.reconstruct_n(0, 5)
    assert (mapped.index.search(q, 5)[1] == copied.index.search(q, 5)[1]).all()
    del mapped, copied
    import gc

    gc.collect()
    copied = load_bundle(copy, mmap=False)
    assert not _mapped(copy / "index.faiss") and copied.gallery_size == 36


def _age(folder, seconds=60):
    """Set every file's mtime ``seconds`` in the past (a bundle as it sits on a host, not one just written)."""
    import os
    import time

    for p in folder.iterdir():
        os.utime(p, (time.time() - seconds, time.time() - seconds))


def test_a_reload_hashes_only_files_changed_since_the_last_check(built, tmp_path):
    from deepmetric.bundle.reader import verify_file

    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    want = read_manifest(copy)["files"]["index.faiss"]
    _age(copy, 0)
    assert verify_file(copy, "index.faiss", want)  # just written (racy): checked, not remembered
    assert verify_file(copy, "index.faiss", want)
    _age(copy)
    load_bundle(copy)
    assert not verify_file(copy, "index.faiss", want)  # unchanged since the load's check: not hashed again
    with pytest.raises(BundleError, match="index.faiss: sha256 .* does not match"):
        verify_file(copy, "index.faiss", "0" * 64)  # remembered with its hash: another hash is checked


@pytest.mark.parametrize("name", ["index.faiss", "ids.parquet", "model.onnx"])
def test_a_file_altered_after_a_remembered_check_is_refused_on_reload(built, tmp_path, name):
    """Same size, mtime put back: the inode's ctime still moves, so the reload hashes it again and refuses it."""
    import os

    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    _age(copy)
    load_bundle(copy)
    st = (copy / name).stat()
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    os.utime(copy / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (copy / name).stat().st_size == st.st_size and (copy / name).stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert err.value.file == name and "does not match the manifest" in err.value.reason


def test_a_file_missing_on_reload_is_refused_naming_it(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    _age(copy)
    load_bundle(copy)
    (copy / "ids.parquet").unlink()
    with pytest.raises(BundleError, match=r"ids.parquet: missing in"):
        load_bundle(copy)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_a_merged_search_deepens_past_the_overfetch_bound_only_where_it_finds_more(built, tmp_path, monkeypatch,
                                                                                    factory):
    """Tombstones beyond OVERFETCH_MAX: a query whose nearest items were removed still gets k live neighbours — the
    exact ones for Flat —; an inverted file that runs out of probed lists (nprobe 1) gives what they hold, never a
    removed item."""
    import numpy as np

    import deepmetric.bundle.reader as reader
    from deepmetric.bundle.gallery import update_gallery
    from tests.deploy_fixtures import make_bundle

    tmp, root, manifest, onnx, bundle_dir = built
    src = bundle_dir if factory == "Flat" else make_bundle(tmp_path / "b", root, manifest, onnx,
                                                           index={"factory": factory, "search": {"nprobe": 1}})
    gone = list(range(0, 24, 2))
    update_gallery(src, tmp_path / "v", remove=gone)
    monkeypatch.setattr(reader, "OVERFETCH_MAX", 1)
    b = load_bundle(tmp_path / "v")
    q = b.vectors(np.arange(len(b.rows)))  # every row's vector, the removed ones too
    scores, rows = b.knn(q, 5)
    assert not set(b.rows["id"].to_numpy()[rows[rows >= 0]]) & set(gone)
    if factory == "Flat":
        live = b.vectors(np.flatnonzero(~b.rows["id"].isin(gone).to_numpy()))
        want = np.sort(q @ live.T, axis=1)[:, ::-1][:, :5]
        np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    else:  # one list probed: what it holds
        assert (rows >= 0).sum() > 0 and ((rows >= 0).sum(axis=1) <= 5).all()
