from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepmetric.data.images import ImageDecodeError
from deepmetric.data.readers import read_items
from deepmetric.index.bulk import embed_items, embedding_matrix, read_embeddings
from deepmetric.index.embedder import OnnxEmbedder
from tests.data.layouts import make_boxed, make_folder
from tests.deploy_fixtures import onnx_model


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def onnx():
    return onnx_model()


def test_a_folder_is_embedded_in_order_with_labels_the_same_by_one_or_two_processes(tmp_path, onnx):
    make_folder(tmp_path / "photos", classes=["a", "b/c"], per_class=7)
    make_folder(tmp_path / "photos", classes=[""], per_class=2, seed=9)  # loose images: no label
    items, root = read_items(tmp_path / "photos")
    one = embed_items(onnx, items, root, tmp_path / "one.parquet", batch_size=4, progress=False)
    two = embed_items(onnx, items, root, tmp_path / "two.parquet", batch_size=4, processes=2, progress=False)
    assert one.path.tolist() == items.path.tolist() == sorted(items.path) and one.id.tolist() == list(range(16))
    assert one.label.fillna("-").tolist() == ["-", "-"] + ["a"] * 7 + ["b/c"] * 7
    np.testing.assert_allclose(embedding_matrix(two), embedding_matrix(one), rtol=0, atol=1e-6)
    again = read_embeddings(tmp_path / "one.parquet")
    assert again.path.tolist() == one.path.tolist() and embedding_matrix(again).shape == (16, OnnxEmbedder(onnx).dim)
    assert not (tmp_path / "one.parquet.partial").exists()


def test_an_interrupted_run_resumes_where_it_stopped_and_new_files_get_new_ids(tmp_path, onnx):
    make_folder(tmp_path / "photos", classes=["a", "b"], per_class=10)
    items, root = read_items(tmp_path / "photos")
    full = embed_items(onnx, items, root, tmp_path / "full.parquet", batch_size=4, progress=False)
    seen = []

    def stop_after_two(n):
        seen.append(n)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        embed_items(onnx, items, root, tmp_path / "out.parquet", batch_size=4, progress=False, on_shard=stop_after_two)
    assert not (tmp_path / "out.parquet").exists() and len(list((tmp_path / "out.parquet.partial").iterdir())) == 2
    redone = []
    out = embed_items(onnx, items, root, tmp_path / "out.parquet", batch_size=4, progress=False,
                      on_shard=redone.append)
    assert sum(redone) == len(items) - sum(seen)  # only what the parts did not hold
    pd.testing.assert_frame_equal(out.drop(columns="embedding"), full.drop(columns="embedding"))
    np.testing.assert_allclose(embedding_matrix(out), embedding_matrix(full), atol=1e-6)
    # new photos later: the old rows keep their ids, the new ones are appended
    make_folder(tmp_path / "photos", classes=["c"], per_class=3, seed=77)
    items, root = read_items(tmp_path / "photos")
    grown = embed_items(onnx, items, root, tmp_path / "out.parquet", batch_size=4, progress=False,
                        on_shard=redone.append)
    assert sum(redone) == len(items) - sum(seen) and grown.id.tolist() == list(range(23))
    assert grown.path.tolist()[:20] == full.path.tolist() and grown.label.tolist()[20:] == ["c"] * 3


def test_a_table_is_embedded_cut_to_its_boxes(tmp_path, onnx):
    boxed, plain = make_boxed(tmp_path / "data")
    boxed.to_csv(tmp_path / "data" / "items.csv", index=False)
    items, root = read_items(tmp_path / "data" / "items.csv")
    got = embed_items(onnx, items, root, tmp_path / "boxed.parquet", batch_size=4, progress=False)
    cropped, croot = read_items(tmp_path / "data" / "cropped")
    want = embed_items(onnx, cropped, croot, tmp_path / "cropped.parquet", batch_size=4, progress=False)
    assert got.path.tolist() == want.path.tolist() and got.label.tolist() == [str(x) for x in boxed.label]
    np.testing.assert_allclose(embedding_matrix(got), embedding_matrix(want), atol=1e-6)


def test_an_unreadable_image_is_named_and_the_shards_done_are_kept(tmp_path, onnx):
    paths = make_folder(tmp_path / "photos", classes=["a", "b"], per_class=10)
    (tmp_path / "photos" / paths[-1]).write_bytes(b"not an image")
    items, root = read_items(tmp_path / "photos")
    with pytest.raises(ImageDecodeError, match=r"b/009.jpg: not an image file"):
        embed_items(onnx, items, root, tmp_path / "out.parquet", batch_size=4, progress=False)
    parts = list((tmp_path / "out.parquet.partial").iterdir())
    assert sum(len(pd.read_parquet(p)) for p in parts) == 16  # the shards before it
