"""deepmetric.index.gallery: the gallery embedded with the ONNX model (serially and in worker processes, cut to
its boxes) into the index the stage writes; `index.factory: auto` resolved by the stage (resolve_index): the rule's
index, its tuned search parameter and build settings, explicit parameters winning; nothing is built for a large n."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepmetric.data.images import ImageLimits
from deepmetric.export.images import test_rows as gallery_rows_of
from deepmetric.index.auto import AUTO, EVIDENCE, choose_factory
from deepmetric.index.build import deserialize_index
from deepmetric.index.config import IndexParams
from deepmetric.index.embedder import OnnxEmbedder
from deepmetric.index.gallery import GALLERY_ROLES, build_gallery_index, embed_gallery, resolve_index
from tests.deploy_fixtures import EMBED_DIM, make_dataset, onnx_model

BUILT_IN = (1828, 128)
"""The built-in set's gallery (test split, role gallery/both) × the default embedding dimension."""


def test_auto_is_the_default_and_the_built_in_gallery_gets_exact_search():
    params = IndexParams()
    assert params.factory == AUTO
    chosen = resolve_index(params, *BUILT_IN)
    assert chosen["factory"] == "Flat" and chosen["search_params"] == {} and chosen["ef_construction"] is None
    assert chosen["auto"]["kind"] == "flat" and "below the smallest measured gallery" in chosen["auto"]["why"]


@pytest.mark.parametrize("n,dim", [(3 * 10 ** 6, 128), (20_000, 512), (10 ** 8, 768)])
def test_a_large_gallery_gets_the_rules_choice_with_its_knob(n, dim):
    choice = choose_factory(n, dim)
    chosen = resolve_index(IndexParams(), n, dim)
    assert chosen["factory"] == choice.factory
    assert chosen["search_params"] == choice.search
    assert chosen["ef_construction"] == choice.build.get("ef_construction")
    assert chosen["auto"] == {"kind": choice.kind, "search_params": choice.search, "train_size": choice.train_size,
                              "polysemous_training": choice.build.get("polysemous_training"), "why": choice.why}


def test_explicit_search_and_build_settings_win_over_the_rule():
    e = max(EVIDENCE, key=lambda e: e.n)
    knob = next(iter(e.search))
    chosen = resolve_index(IndexParams(search={knob: 3}, ef_construction=99), e.n, e.dim)
    assert chosen["search_params"] == {knob: 3} and chosen["ef_construction"] == 99
    assert chosen["auto"]["search_params"] == dict(e.search)


def test_a_factory_string_is_built_as_given():
    params = IndexParams(factory="HNSW8", search={"efSearch": 16})
    assert resolve_index(params, 10 ** 7, 512) == {"factory": "HNSW8", "search_params": {"efSearch": 16},
                                                   "ef_construction": None, "auto": None}


def test_an_empty_gallery_is_left_to_the_builder_to_refuse():
    assert resolve_index(IndexParams(), 0, 128)["factory"] == AUTO


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("index_data")
    manifest = make_dataset(root)
    return root, manifest, onnx_model()


def test_gallery_index_uses_the_onnx_model(gallery):
    root, manifest, onnx_bytes = gallery
    data, ids, report = build_gallery_index(onnx_bytes, manifest, root, IndexParams(factory="HNSW8",
                                            search={"efSearch": 32}, recall_ks=[1, 5]))
    test = manifest[(manifest["split"] == "test") & manifest["role"].isin(["gallery", "both"])]
    assert list(ids.columns) == ["id", "label", "class_name", "path"]
    assert ids["path"].tolist() == test["path"].tolist() and ids["id"].tolist() == list(range(len(test)))
    index = deserialize_index(data)
    assert index.ntotal == len(test) and index.d == EMBED_DIM
    assert report["gallery_size"] == len(test) and report["factory"] == "HNSW8"
    assert report["search_params"] == {"efSearch": 32}
    assert 0.0 <= report["recall@5_vs_exact"] <= 1.0 and report["recall@1_vs_exact"] > 0.9
    assert set(report["latency"]["index"]) == {"k", "single_query", "batch"}
    # The stored vectors are the ONNX model's embeddings of eval_image(open_image(file)).
    from deepmetric.export.images import load_batch

    emb = OnnxEmbedder(onnx_bytes)
    first = emb.embed(load_batch(root, [ids["path"][0]], emb.spec, ImageLimits(max_pixels=10**7)))
    _, nn = index.search(first, 1)
    assert nn[0, 0] == 0


def test_gallery_roles_exclude_query_only_rows(gallery):
    root, manifest, onnx_bytes = gallery
    m = manifest.copy()
    test_idx = m.index[m["split"] == "test"]
    m.loc[test_idx[:4], "role"] = "query"
    _, ids, report = build_gallery_index(onnx_bytes, m, root, IndexParams())
    assert report["gallery_size"] == len(test_idx) - 4
    assert not set(m.loc[test_idx[:4], "path"]) & set(ids["path"])
    with pytest.raises(ValueError, match="no test-split rows"):
        build_gallery_index(onnx_bytes, m[m["split"] != "test"], root, IndexParams())
    assert isinstance(ids, pd.DataFrame)


def test_processes_give_the_serial_embeddings_in_order(tmp_path):
    manifest = make_dataset(tmp_path, num_classes=8, per_class=6)
    rows = gallery_rows_of(manifest, GALLERY_ROLES)  # 36 rows: 5 batches of 8, over 2 processes × 4 shards
    onnx = onnx_model()
    embedder = OnnxEmbedder(onnx, threads=1)
    serial = embed_gallery(onnx, embedder, rows, tmp_path, IndexParams(batch_size=8, threads=1), ImageLimits(max_pixels=10**7))
    sharded = embed_gallery(onnx, embedder, rows, tmp_path, IndexParams(batch_size=8, threads=1, processes=2),
                            ImageLimits(max_pixels=10**7))
    assert serial.shape == sharded.shape == (len(rows), embedder.dim)
    # same batches through the same graph: equal to float32 rounding (1e-6 on unit vectors)
    np.testing.assert_allclose(sharded, serial, rtol=0, atol=1e-6)
    # and in manifest order: each row's nearest stored vector is itself
    assert (np.argmax(sharded @ serial.T, axis=1) == np.arange(len(rows))).all()


def test_the_gallery_is_embedded_cut_to_its_boxes_serially_and_in_shards(tmp_path):
    from tests.data.layouts import make_boxed

    boxed, plain = make_boxed(tmp_path, num_classes=4, per_class=5)
    onnx = onnx_model()
    embedder = OnnxEmbedder(onnx, threads=1)
    limits = ImageLimits(max_pixels=10**7)
    want = embed_gallery(onnx, embedder, plain, tmp_path / "cropped", IndexParams(batch_size=4, threads=1), limits)
    for processes in (1, 2):
        got = embed_gallery(onnx, embedder, boxed, tmp_path, IndexParams(batch_size=4, threads=1, processes=processes),
                            limits)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
