"""The decoded-image cache: exact pixels, reuse across runs, invalidation by content hash, bad states named."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from deepmetric.data.cache import ImageCache, StaleManifestError
from deepmetric.data.dataset import ManifestImages
from deepmetric.data.images import ImageDecodeError, ImageLimits, open_image
from deepmetric.data.transforms import InputSpec, eval_image


def _images(root, n=6, size=(60, 40)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(size[1], size[0] + 7 * i, 3), dtype=np.uint8)
        p = f"c{i % 2}/{i}.png"
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / p)
        paths.append(p)
    return paths


def _sha(root, paths):
    return [hashlib.sha256((root / p).read_bytes()).hexdigest() for p in paths]


def test_raw_cache_reads_back_the_decoded_pixels_and_is_reused(tmp_path):
    root = tmp_path / "data"
    paths = _images(root)
    cache = ImageCache.at(tmp_path / "cache", short_side=64, fmt="raw")  # larger than every image: no resize
    view = cache.ensure(str(root), paths, _sha(root, paths))
    for i, p in enumerate(paths):
        assert np.array_equal(view.array(i), np.asarray(open_image(root / p)))
    shards = sorted(cache.directory.glob("shard-*.bin"))
    again = cache.ensure(str(root), paths[::-1], _sha(root, paths[::-1]))  # another run, another order
    assert sorted(cache.directory.glob("shard-*.bin")) == shards  # nothing rebuilt
    assert np.array_equal(again.array(0), view.array(len(paths) - 1))


def test_a_changed_image_gets_a_new_entry(tmp_path):
    root = tmp_path / "data"
    paths = _images(root)
    cache = ImageCache.at(tmp_path / "cache", 64)
    cache.ensure(str(root), paths, _sha(root, paths))
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / paths[0])  # new bytes; re-ingested manifest
    view = cache.ensure(str(root), paths, _sha(root, paths))
    assert len(cache.read_index()) == len(paths) + 1
    assert view.array(0).max() == 0
    assert np.array_equal(view.array(1), np.asarray(open_image(root / paths[1])))


def test_bytes_that_no_longer_match_the_manifest_are_refused(tmp_path):
    root = tmp_path / "data"
    paths = _images(root)
    sha = _sha(root, paths)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / paths[2])  # changed after ingest
    with pytest.raises(StaleManifestError, match=r"2\.png: the file's bytes changed since ingest"):
        ImageCache.at(tmp_path / "cache", 64).ensure(str(root), paths, sha)
    assert not list((tmp_path / "cache").rglob("shard-*.bin"))  # no half-written shard


def test_reduced_cache_gives_the_evaluation_transform_exactly(tmp_path):
    root = tmp_path / "data"
    paths = _images(root, size=(90, 70))
    spec = InputSpec(resize=48, crop=40)
    view = ImageCache.at(tmp_path / "cache", short_side=48).ensure(str(root), paths, workers=2)
    assert min(view.array(0).shape[:2]) == 48
    cached = ManifestImages(str(root), paths, spec, cached=view)
    plain = ManifestImages(str(root), paths, spec)
    for i in range(len(paths)):
        assert np.array_equal(cached[i].numpy(), plain[i].numpy())
        assert np.array_equal(cached[i].numpy().transpose(1, 2, 0), eval_image(open_image(root / paths[i]), spec))


def test_jpeg_cache_is_close_and_smaller(tmp_path):
    root = tmp_path / "data"
    paths = _images(root, n=4, size=(120, 100))
    for p in paths:  # smooth images, like photographs
        Image.open(root / p).resize((12, 10)).resize((120 + 0, 100), Image.BILINEAR).save(root / p)
    raw = ImageCache.at(tmp_path / "cache", 100, "raw").ensure(str(root), paths)
    jpg = ImageCache.at(tmp_path / "cache", 100, "jpeg").ensure(str(root), paths)
    assert jpg.length.sum() < raw.length.sum() / 3
    diff = np.abs(jpg.array(0).astype(int) - raw.array(0).astype(int))
    assert diff.mean() < 2.0


def test_a_damaged_shard_is_named(tmp_path):
    root = tmp_path / "data"
    paths = _images(root)
    cache = ImageCache.at(tmp_path / "cache", 64)
    view = cache.ensure(str(root), paths)
    shard = next(cache.directory.glob("shard-*.bin"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ImageDecodeError, match="is damaged"):
        view.array(len(paths) - 1)


def test_a_thin_image_is_refused_before_it_is_cached(tmp_path):
    """The per-image bounds of open_image (aspect ratio from the header) apply when the cache is built."""
    root = tmp_path / "data"
    paths = _images(root, n=2)
    Image.new("RGB", (5000, 1), "white").save(root / "thin.png")
    with pytest.raises(ImageDecodeError, match=r"thin\.png: refused as too thin.*max_aspect_ratio"):
        ImageCache.at(tmp_path / "cache", 64).ensure(str(root), [*paths, "thin.png"],
                                                         limits=ImageLimits(max_aspect_ratio=100))


def test_an_image_with_a_box_is_cached_cut_to_it_at_full_resolution(tmp_path):
    """The crop comes before the reduction (a small box in a large image keeps its pixels), under its own key:
    the same file whole and cut are two entries, and the cached crop gives the evaluation transform exactly."""
    root = tmp_path / "data"
    paths = _images(root, n=2, size=(200, 160))
    spec = InputSpec(resize=32, crop=32)
    boxes = [(150.0, 10.0, 190.0, 50.0), None]
    cache = ImageCache.at(tmp_path / "cache", short_side=32)
    whole = cache.ensure(str(root), paths, _sha(root, paths))
    cut = cache.ensure(str(root), paths, _sha(root, paths), boxes=boxes)
    assert len(cache.read_index()) == 3
    assert cut.array(0).shape == (32, 32, 3) and whole.array(0).shape != cut.array(0).shape
    assert np.array_equal(cut.array(1), whole.array(1))
    plain = ManifestImages(str(root), paths, spec, boxes=boxes)
    cached = ManifestImages(str(root), paths, spec, cached=cut, boxes=boxes)
    expected = eval_image(open_image(root / paths[0]).crop((150, 10, 190, 50)), spec)
    assert np.array_equal(plain[0].numpy().transpose(1, 2, 0), expected)
    assert np.array_equal(cached[0].numpy(), plain[0].numpy())
