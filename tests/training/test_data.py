"""The training data path: the same batches for any worker count, the method's own batch composition, workers
that really are processes, GPU-decode code path (on the CPU), and the cache in the loop."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data.cache import ImageCache
from deepmetric.data.dataset import ManifestImages
from deepmetric.data.images import ImageDecodeError, ImageLimits, ImageTooLargeError
from deepmetric.data.transforms import InputSpec, train_transform
from deepmetric.methods import METHODS
from deepmetric.methods.base import BatchConfig
from deepmetric.models.backbones import BackboneConfig, build_backbone
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.data import TrainLoader, gpu_decode_batch
from deepmetric.training.loop import fit
from tests.fixtures import STRICT_LIMITS, make_bars, plant_image

SPEC = InputSpec(resize=32, crop=24)


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    root = tmp_path_factory.mktemp("bars")
    manifest = make_bars(root, lambda c: "train" if c < 8 else ("val" if c < 10 else "test"), size=36)
    return str(root), manifest


def _loader(root, manifest, workers, decode="cpu", cached=None):
    train = manifest[manifest["split"] == "train"]
    images = ManifestImages(root, train["path"], SPEC, cached=cached)
    t = train_transform(SPEC, scale=(0.3, 1.0), hflip=True)
    return TrainLoader(images, t, torch.device("cpu"), num_workers=workers, decode=decode), train


def _epoch(loader, batches, epoch=0):
    try:
        return [(idx, imgs.clone()) for idx, imgs in loader.epoch(batches, seed=7, epoch=epoch)]
    finally:
        pass


def test_zero_and_two_workers_give_the_same_batches(bars):
    root, manifest = bars
    labels = manifest[manifest["split"] == "train"]["label"].to_numpy()
    from deepmetric.methods.base import class_balanced_batches

    batches = list(class_balanced_batches(labels, BatchConfig(classes_per_batch=4, samples_per_class=3), 3, 4))
    runs = []
    for workers in (0, 2):
        loader, _ = _loader(root, manifest, workers)
        try:
            runs.append([_epoch(loader, batches, e) for e in (0, 1)])  # two epochs: persistent workers
        finally:
            loader.close()
    for e in (0, 1):
        for (i0, a), (i2, b) in zip(runs[0][e], runs[1][e], strict=True):
            assert i0 == i2
            assert torch.equal(a, b)
    # augmentation differs between epochs and between positions of the same image
    assert not torch.equal(runs[0][0][0][1], runs[0][1][0][1])


def test_load_augments_the_images_a_method_asks_for(bars):
    """`TrainContext.load` (extra images mid-step) goes through `TrainLoader.load`, which raised ValueError on every
    call (a negative entry in the sample's SeedSequence)."""
    root, manifest = bars
    loader, _ = _loader(root, manifest, 0)
    try:
        a, again = loader.load([0, 1, 2], seed=5, step=0), loader.load([0, 1, 2], seed=5, step=0)
        assert a.shape == (3, 3, 24, 24) and a.dtype == torch.uint8
        assert torch.equal(a, again)  # seeded: a resumed run loads the same pixels
        assert not torch.equal(a, loader.load([0, 1, 2], seed=6, step=0))
        assert not torch.equal(a[0], loader.load([1, 0, 2], seed=5, step=0)[1])  # each position has its own seed
    finally:
        loader.close()


@pytest.mark.parametrize("method", ["margin", "divide_conquer", "sharing", "intra_batch"])
def test_the_loader_keeps_the_methods_batch_composition(bars, method):
    root, manifest = bars
    labels = manifest[manifest["split"] == "train"]["label"].to_numpy()
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="resnet18"))
    m = METHODS[method](METHODS[method].Params(), backbone, 8, len(np.unique(labels)))
    if method == "divide_conquer":
        m.assignment = torch.as_tensor(labels % 2, dtype=torch.long)
        m.active.fill_(2)
    batch = BatchConfig(classes_per_batch=4, samples_per_class=2)
    expected = list(m.batch_sampler(labels, batch, 11, 3))
    assert expected == list(m.batch_sampler(labels, batch, 11, 3))  # same indices for the same seed
    loader, _ = _loader(root, manifest, 1)
    try:
        got = _epoch(loader, expected)
    finally:
        loader.close()
    assert [idx for idx, _ in got] == expected
    assert all(len(imgs) == len(idx) for idx, imgs in got)


class _PidImages(ManifestImages):
    def _item(self, i):
        x = super()._item(i)
        pid = os.getpid()  # smuggle the decoding process out with the pixels (3 bytes)
        x[0, 0, :3] = torch.tensor([pid & 255, (pid >> 8) & 255, (pid >> 16) & 255], dtype=torch.uint8)
        return x


def test_num_workers_is_the_number_of_decode_processes(bars):
    root, manifest = bars
    train = manifest[manifest["split"] == "train"]
    labels = train["label"].to_numpy()
    from deepmetric.methods.base import class_balanced_batches

    batches = list(class_balanced_batches(labels, BatchConfig(classes_per_batch=4, samples_per_class=2), 0, 8))
    seen = {}
    for workers in (0, 2):
        images = _PidImages(root, train["path"], SPEC)
        loader = TrainLoader(images, train_transform(SPEC), torch.device("cpu"), num_workers=workers)
        try:
            pids = {int(x[0, 0, 0]) | int(x[0, 0, 1]) << 8 | int(x[0, 0, 2]) << 16
                    for _, imgs in loader.epoch(batches, 0, 0) for x in imgs}
        finally:
            loader.close()
        seen[workers] = pids
    assert seen[0] == {os.getpid() & 0xFFFFFF}
    assert len(seen[2]) == 2 and os.getpid() & 0xFFFFFF not in seen[2]


def test_gpu_decode_path_on_the_cpu_matches_the_cpu_path(tmp_path):
    """The nvJPEG code path (decode_jpeg on a list + crop/resize on the device) run with device=cpu: same crops
    as the CPU path (same seeds), pixels within resampling noise; PNGs fall back to CPU decoding."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((80 + 4 * i, 60), Image.BILINEAR)
        p = f"{i}.jpg" if i % 3 else f"{i}.png"
        img.save(tmp_path / p, quality=95) if p.endswith("jpg") else img.save(tmp_path / p)
        paths.append(p)
    images = ManifestImages(str(tmp_path), paths, SPEC)
    t = train_transform(SPEC, scale=(0.5, 1.0), hflip=True)
    cpu = TrainLoader(images, t, torch.device("cpu"), 0, decode="cpu")
    gpu = TrainLoader(images, t, torch.device("cpu"), 0, decode="gpu")
    batches = [[0, 1, 2], [3, 4, 5]]
    for (ia, a), (ib, b) in zip(cpu.epoch(batches, 1, 0), gpu.epoch(batches, 1, 0), strict=True):
        assert ia == ib and a.shape == b.shape == (3, 3, 24, 24) and b.dtype == torch.uint8
        assert (a.float() - b.float()).abs().mean() < 6.0
    items = [gpu.dataset[k] for k in gpu.sampler.keys(0)]
    assert [it[0] for it in items] == ["pixels", "jpeg", "jpeg"]
    assert gpu_decode_batch(items, t, torch.device("cpu")).shape == (3, 3, 24, 24)


def test_gpu_decode_refuses_a_raw_cache(tmp_path, bars):
    root, manifest = bars
    train = manifest[manifest["split"] == "train"]
    view = ImageCache.at(tmp_path, 32).ensure(root, train["path"].tolist())
    with pytest.raises(ValueError, match="decode=gpu decodes JPEG bytes"):
        _loader(root, manifest, 0, decode="gpu", cached=view)


def test_gpu_decode_refuses_augmentations_it_cannot_run(bars):
    from deepmetric.data.transforms import RandomCrop

    root, manifest = bars
    images = ManifestImages(root, manifest["path"], SPEC)
    with pytest.raises(ValueError, match="decode=gpu crops on the GPU with RandomResizedCrop"):
        TrainLoader(images, RandomCrop(24, 32, True), torch.device("cpu"), 0, decode="gpu")


@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
def test_gpu_decode_refuses_what_the_cpu_decode_refuses(tmp_path, limit):
    """The worker side of decode=gpu (run here with device=cpu) checks each JPEG's header with the CPU decode's
    check, before nvJPEG gets the bytes: the same limits, the same error (file named, parameter quoted)."""
    params, size, words = STRICT_LIMITS[limit]
    plant_image(tmp_path / "ok.jpg", (40, 30))
    plant_image(tmp_path / "bad.jpg", size)
    images = ManifestImages(str(tmp_path), ["ok.jpg", "bad.jpg"], SPEC, limits=ImageLimits(**params))
    gpu = TrainLoader(images, train_transform(SPEC), torch.device("cpu"), 0, decode="gpu")
    assert gpu.dataset[(0, 1)][0] == "jpeg"
    with pytest.raises(ImageTooLargeError) as on_gpu_path:
        gpu.dataset[(1, 1)]
    with pytest.raises(ImageTooLargeError) as on_cpu_path:
        images.image(1)
    assert words in str(on_gpu_path.value) and str(on_gpu_path.value) == str(on_cpu_path.value)


def test_gpu_decode_reports_a_broken_jpeg_header_as_the_cpu_decode_does(tmp_path):
    """JPEG magic bytes followed by garbage: a user error naming the file on both paths (the GPU path let
    Pillow's UnidentifiedImageError through before it shared the CPU decode's header check)."""
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 4)
    images = ManifestImages(str(tmp_path), ["broken.jpg"], SPEC)
    gpu = TrainLoader(images, train_transform(SPEC), torch.device("cpu"), 0, decode="gpu")
    with pytest.raises(ImageDecodeError) as on_gpu_path:
        gpu.dataset[(0, 1)]
    with pytest.raises(ImageDecodeError) as on_cpu_path:
        images.image(0)
    assert "broken.jpg: not an image file" in str(on_gpu_path.value)
    assert str(on_gpu_path.value) == str(on_cpu_path.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decode); none on this machine")
def test_gpu_decode_on_cuda(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    images = ManifestImages(str(tmp_path), [f"{i}.jpg" for i in range(4)], SPEC)
    t = train_transform(SPEC)
    gpu = TrainLoader(images, t, torch.device("cuda"), 0, decode="gpu")
    (_, x), = list(gpu.epoch([[0, 1, 2, 3]], 0, 0))
    assert x.is_cuda and x.shape == (4, 3, 24, 24)


def test_fit_with_workers_and_cache_equals_fit_in_process(bars, tmp_path):
    """0 vs 2 workers, cache on vs off: the same trained weights (bars are smaller than the cached size)."""
    root, manifest = bars
    base = {"method": "margin", "epochs": 2, "steps_per_epoch": 2, "embedding_dim": 8, "progress": False,
            "batch": {"classes_per_batch": 4, "samples_per_class": 3}, "eval_batch_size": 64}
    spec = InputConfig(resize=36, crop=32)
    a = fit(manifest, root, *parse_train({**base, "num_workers": 0, "cache": {"mode": "off"}}), spec)
    b = fit(manifest, root, *parse_train({**base, "num_workers": 2, "cache": {"mode": "raw"}}), spec,
            cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("raw-s36/shard-*.bin"))
    for k, v in a.payload["state_dict"].items():
        torch.testing.assert_close(v, b.payload["state_dict"][k], msg=k)



def test_training_images_are_cut_to_their_boxes_with_or_without_the_cache_and_on_the_gpu_path(tmp_path):
    from deepmetric.training.data import open_images
    from tests.data.layouts import make_boxed

    boxed, plain = make_boxed(tmp_path, num_classes=2, per_class=3)
    spec = InputSpec(resize=24, crop=24)
    want = open_images(str(tmp_path / "cropped"), plain, spec, None, None, 0, False)
    cache = ImageCache.at(tmp_path / "cache", short_side=24)
    for got in (open_images(str(tmp_path), boxed, spec, None, None, 0, False),
                open_images(str(tmp_path), boxed, spec, cache, None, 0, False)):
        for i in range(len(boxed)):
            assert torch.equal(got[i], want[i])
    # the nvJPEG path decodes whole files: a boxed JPEG is decoded and cut on the CPU instead
    jpegs, _ = make_boxed(tmp_path / "jpeg", num_classes=2, per_class=3, ext="jpg")
    t = train_transform(spec)
    images = open_images(str(tmp_path / "jpeg"), jpegs, spec, None, None, 0, False)
    gpu = TrainLoader(images, t, torch.device("cpu"), 0, decode="gpu")
    cpu = TrainLoader(images, t, torch.device("cpu"), 0)
    assert gpu.dataset[(0, 5)][0] == "pixels"
    unboxed = open_images(str(tmp_path / "jpeg"), jpegs.drop(columns=["x_1", "y_1", "x_2", "y_2"]), spec, None, None,
                          0, False)
    assert TrainLoader(unboxed, t, torch.device("cpu"), 0, decode="gpu").dataset[(0, 5)][0] == "jpeg"
    (_, a), = cpu.epoch([[0, 1, 2]], 3, 0)
    (_, b), = gpu.epoch([[0, 1, 2]], 3, 0)
    assert torch.equal(a, b)
