"""Gallery thumbnails in the bundle: written by the bundle code, checksummed, sharded, optional."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from deepmetric.bundle import BundleError, load_bundle
from deepmetric.bundle.build import build_bundle
from deepmetric.bundle.config import BundleParams
from deepmetric.bundle.format import MANIFEST_FILE, manifest_sha256, sha256
from tests.deploy_fixtures import evaluated, make_bundle, onnx_model


@pytest.fixture(scope="module")
def data(deploy_data):
    return deploy_data


def test_thumbnails_are_small_images_in_gallery_order(deploy_bundle):
    folder, root, manifest = deploy_bundle  # tests/conftest.py: default bundle parameters
    b = load_bundle(folder)
    info = b.manifest["thumbnails"]
    assert info["files"] == ["thumbnails-00000.parquet"] and info["count"] == b.gallery_size == 36
    assert b.manifest["files"]["thumbnails-00000.parquet"] == sha256((folder / "thumbnails-00000.parquet").read_bytes())
    assert b.thumbnails.media_type == "image/webp"
    for i in (0, 17, 35):
        img = Image.open(io.BytesIO(b.thumbnails.get(i)))
        assert img.format == "WEBP"
        original = Image.open(root / b.ids["path"][i])
        assert img.size == original.size  # 40×36 fits in 96 px: never enlarged
        # the thumbnail of id i is the image of id i (its dominant colour)
        assert _mean_colour(img) == pytest.approx(_mean_colour(original.convert("RGB")), abs=8)
    assert b.thumbnails.get(36) is None and b.thumbnails.get(-1) is None


def _mean_colour(img):
    px = list(img.convert("RGB").getdata())
    return [sum(p[c] for p in px) / len(px) for c in range(3)]


def test_shards_jpeg_and_size(data):
    tmp, root, manifest = data
    folder = make_bundle(tmp / "sharded", root, manifest, onnx_model(),
                         bundle={"thumbnails": {"shard_items": 10, "format": "jpeg", "size": 20}})
    b = load_bundle(folder)
    assert b.manifest["thumbnails"]["files"] == [f"thumbnails-0000{i}.parquet" for i in range(4)]
    img = Image.open(io.BytesIO(b.thumbnails.get(25)))
    assert img.format == "JPEG" and max(img.size) == 20 and b.thumbnails.media_type == "image/jpeg"


def test_disabled_means_no_files_and_no_dataset_needed(data, tmp_path):
    tmp, root, manifest = data
    folder = make_bundle(tmp / "off", root, manifest, onnx_model(), bundle={"thumbnails": {"enabled": False}})
    assert not list(folder.glob("thumbnails-*"))
    b = load_bundle(folder)
    assert b.manifest["thumbnails"] is None and b.thumbnails is None


def test_unreadable_gallery_image_names_it(data, tmp_path):
    tmp, root, manifest = data
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    victim = manifest[manifest["split"] == "test"]["path"].iloc[3]
    (copy / victim).write_bytes(b"not a png")
    from deepmetric.index.config import IndexParams
    from deepmetric.index.gallery import build_gallery_index

    index_bytes, ids, report = build_gallery_index(onnx_model(), manifest, root, IndexParams())
    with pytest.raises(BundleError, match="thumbnails") as err:
        build_bundle(onnx_model(), index_bytes, ids, evaluated(onnx_model()), BundleParams(), image_root=str(copy),
                     index_report=report)
    assert victim.split("/")[-1] in str(err.value) and "enabled: false" in str(err.value)


def test_manifest_cannot_name_other_files_as_thumbnails(data, tmp_path):
    tmp, root, manifest = data
    folder = make_bundle(tmp_path / "b", root, manifest, onnx_model())
    m = json.loads((folder / MANIFEST_FILE).read_text())
    m["thumbnails"]["files"] = ["../../etc/passwd"]
    m["manifest_sha256"] = manifest_sha256(m)
    (folder / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="thumbnails-NNNNN.parquet"):
        load_bundle(folder)


def test_thumbnails_read_gallery_images_under_the_data_parameters_limits(tmp_path):
    """The bundle stage passes `data.limits`: a 150:1 image accepted by ingest with max_aspect_ratio 200 must not be
    refused when its thumbnail is made (it was checked against the default 100:1)."""
    from deepmetric.bundle.thumbnails import build_thumbnail_shards
    from deepmetric.data.images import ImageLimits, ImageTooLargeError

    Image.new("RGB", (300, 2), "red").save(tmp_path / "thin.png")
    kw = {"size": 32, "fmt": "webp", "quality": 80, "shard_items": 10}
    shards = build_thumbnail_shards(["thin.png"], tmp_path, limits=ImageLimits(max_aspect_ratio=200), **kw)
    assert list(shards) == ["thumbnails-00000.parquet"]
    with pytest.raises(ImageTooLargeError, match="max_aspect_ratio"):
        build_thumbnail_shards(["thin.png"], tmp_path, limits=ImageLimits(), **kw)


def test_thumbnails_of_boxed_gallery_images_are_cut_to_their_boxes(tmp_path):
    """The index stage passes the boxes on in its id table; the bundle's thumbnails are the cut images (the same
    bytes as thumbnails of copies cut beforehand), and the bundle's own id table keeps its four columns."""
    from tests.data.layouts import make_boxed

    boxed, plain = make_boxed(tmp_path / "data", num_classes=3, per_class=3)
    onnx = onnx_model()
    cut = load_bundle(make_bundle(tmp_path / "boxed", tmp_path / "data", boxed, onnx))
    want = load_bundle(make_bundle(tmp_path / "plain", tmp_path / "data" / "cropped", plain, onnx))
    assert [cut.thumbnails.get(i) for i in range(9)] == [want.thumbnails.get(i) for i in range(9)]
    assert list(cut.ids.columns) == ["id", "label", "class_name", "path"]
