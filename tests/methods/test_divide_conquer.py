"""Divide and Conquer: Hungarian re-matching, hierarchical splitting, mask orthogonality, frozen-backbone epochs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepmetric.methods import METHODS
from deepmetric.methods.base import BatchConfig
from deepmetric.methods.divide_conquer import (
    DivideConquerParams,
    has_enough_classes,
    mask_orthogonality,
    match_clusters,
    split_clusters,
)


def test_hungarian_keeps_each_learner_on_its_cluster_when_clusters_are_permuted():
    rng = np.random.default_rng(0)
    previous = rng.integers(0, 5, size=200)
    perm = np.array([3, 0, 4, 1, 2])
    new = perm[previous]  # k-means returned the same clusters under other ids
    np.testing.assert_array_equal(match_clusters(previous, new, 5), previous)
    # with 10 % of the samples moved, each learner still gets the cluster that overlaps its old one most
    noisy = new.copy()
    moved = rng.choice(200, size=20, replace=False)
    noisy[moved] = rng.integers(0, 5, size=20)
    matched = match_clusters(previous, noisy, 5)
    for c in range(5):
        assert np.bincount(matched[previous == c], minlength=5).argmax() == c


def _blobs(n_blobs: int, classes_per_blob: int = 2, per_class: int = 3, seed: int = 0):
    # blob b sits at a corner of a hierarchy: bit i of b moves it ±(100, 20, 5)[i] along axis i, so 2-means splits
    # the data level by level (1 → 2 → 4 → 8)
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for b in range(n_blobs):
        centre = np.zeros(8)
        for i, scale in enumerate((100.0, 20.0, 5.0)):
            centre[i] = scale if (b >> i) & 1 else -scale
        for c in range(classes_per_blob):
            feats.append(centre + 0.3 * rng.normal(size=(per_class, 8)))
            labels += [b * classes_per_blob + c] * per_class
    return np.concatenate(feats).astype(np.float32), np.array(labels)


def test_hierarchical_split_counts():
    feats, labels = _blobs(8)
    assign = np.zeros(len(labels), dtype=np.int64)
    counts = []
    for _ in range(3):
        assign, splits = split_clusters(feats, assign, labels, target=8, seed=0)
        counts.append(int(assign.max()) + 1)
        assert [c for _, c in splits] == list(range(counts[-1] - len(splits), counts[-1]))
        for c in range(counts[-1]):
            assert has_enough_classes(labels[assign == c])  # every child: ≥ 2 classes with ≥ 2 images
    assert counts == [2, 4, 8]
    # a target that is not a power of two stops there: 1 → 2 → 4 → 6
    assign6 = np.zeros(len(labels), dtype=np.int64)
    for _ in range(3):
        assign6, _ = split_clusters(feats, assign6, labels, target=6, seed=0)
    assert int(assign6.max()) + 1 == 6
    # a cluster that cannot give two children with 2 classes each stays whole
    feats1, labels1 = _blobs(1, classes_per_blob=3)
    same, splits = split_clusters(feats1, np.zeros(len(labels1), dtype=np.int64), labels1, target=2, seed=0, retries=3)
    assert splits == [] and (same == 0).all()


def test_mask_orthogonality_value():
    masks = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [-1.0, 2.0, 0.0]])
    # ReLU → (1,0,1), (1,1,0), (0,2,0); cosines 1/2, 0, 1/√2; mean over the 6 ordered pairs
    expected = 2 * (0.5 + 0.0 + 1 / math.sqrt(2)) / 6
    assert mask_orthogonality(masks).item() == pytest.approx(expected, rel=1e-6)
    assert mask_orthogonality(masks[:1]).item() == 0


def _method(tiny_backbone, **kw):
    params = DivideConquerParams(**{"num_clusters": 4, "kmeans_niter": 10, "kmeans_nredo": 1, **kw})
    return METHODS["divide_conquer"](params, tiny_backbone(frozen_bn=True), 16, 12)


def _data(n_classes: int = 12, per_class: int = 4):
    torch.manual_seed(1)
    labels = np.repeat(np.arange(n_classes), per_class)
    # images whose mean colour depends on the class, so the backbone's features cluster a little
    images = torch.randn(len(labels), 3, 32, 32) * 0.3 + torch.as_tensor(labels, dtype=torch.float32)[:, None, None, None] / 6
    return images, labels


def test_first_split_waits_for_the_warm_up_and_the_schedule_runs_through_the_merge(tiny_backbone, simple_context):
    """TPAMI code: one learner for the first period (no split at e = 0), then 1 → 2 → 4; freezing and re-clustering
    go on after the merge (force_full_embedding_epoch), where the masks stop training."""
    images, labels = _data()
    method = _method(tiny_backbone, full_embedding_epoch=6)
    ctx = simple_context(method, images, labels, lr=1e-3, epochs=8)
    lrs, masks_lr, active = [], [], []
    for epoch in range(8):
        ctx.begin_epoch(epoch)
        method.on_epoch_start(ctx)
        lrs.append(ctx.lr_of("backbone"))
        masks_lr.append(ctx.lr_of("masks"))
        active.append(int(method.active))
    assert active == [1, 1, 2, 2, 4, 4, 4, 4]  # the split waits for the warm-up period (e > 0)
    assert lrs == [0, 1e-3, 0, 1e-3, 0, 1e-3, 0, 1e-3]  # frozen in the epoch after each re-clustering, merged too
    assert masks_lr == [1e-3] * 6 + [0, 0]  # absolute mask lr (100 × the paper's 1e-5); off once merged


@pytest.mark.parametrize("base_lr", [1e-5, 1e-3])
def test_mask_and_beta_learning_rates_do_not_scale_with_the_base_lr(tiny_backbone, base_lr):
    method = _method(tiny_backbone, learn_beta=True)
    lrs = {g["name"]: g["lr"] for g in method.param_groups(base_lr, 0.0)}
    assert lrs["masks"] == 1e-3 and lrs["backbone"] == base_lr and lrs["loss"] == base_lr
    sharing = METHODS["sharing"](METHODS["sharing"].Params(), tiny_backbone(), 16, 12)
    assert {g["name"]: g["lr"] for g in sharing.param_groups(base_lr, 0.0)}["loss"] == 5e-4  # class_beta_lr


def test_masks_stay_positive_at_the_paper_rate(tiny_backbone, simple_context):
    """With the masks' lr tied to the base lr (the bug: 100 × 1e-3 = 0.1) entries cross 0 within a few dozen steps
    and never come back under the ReLU; at the paper's absolute rate (1e-3) none do."""
    images, labels = _data()
    below = {}
    for mask_lr in (1e-3, 0.1):
        method = _method(tiny_backbone, mask_lr=mask_lr, num_clusters=2, recluster_every=1, freeze_epochs=0)
        method.backbone.requires_grad_(False)  # only the head and the masks matter here (and it is 3x faster)
        ctx = simple_context(method, images, labels, lr=1e-3, epochs=4)
        method.train()
        for epoch in range(2):  # epoch 0: one learner; epoch 1: two
            ctx.begin_epoch(epoch)
            method.on_epoch_start(ctx)
            for idx in method.batch_sampler(labels, BatchConfig(classes_per_batch=4, samples_per_class=2), epoch, 15):
                x, y = ctx.load(idx)
                method.training_step(x, y, ctx)
                ctx.step += 1
        below[mask_lr] = float((method.masks[: int(method.active)] <= 0).float().mean())
    assert below[1e-3] == 0.0
    assert below[0.1] > 0.0, below


def test_batches_come_round_robin_from_each_cluster_and_train_that_learner(tiny_backbone, simple_context):
    images, labels = _data()
    method = _method(tiny_backbone, mask_lambda=0.0, num_clusters=2)
    ctx = simple_context(method, images, labels)
    for epoch in (0, 2):  # the first split comes at the second re-clustering
        ctx.begin_epoch(epoch)
        method.on_epoch_start(ctx)
    assign = method.assignment.numpy()
    batches = list(method.batch_sampler(labels, BatchConfig(classes_per_batch=3, samples_per_class=2), 0, 4))
    for b, idx in enumerate(batches):
        assert len(idx) == 6 and (assign[idx] == b % 2).all()
    method.train()
    for b, idx in enumerate(batches[:2]):
        x, y = ctx.load(idx)
        method.zero_grad()
        out = method.learner_loss(method(x), y, method.current_cluster(ctx))
        out["loss"].backward()
        grads = method.masks.grad.abs().sum(1)
        assert grads[b] > 0 and grads[1 - b] == 0  # only this cluster's learner (mask) is trained
        ctx.step += 1


def test_state_survives_a_checkpoint(tiny_backbone, simple_context):
    images, labels = _data()
    method = _method(tiny_backbone)
    ctx = simple_context(method, images, labels)
    for epoch in (0, 2):
        ctx.begin_epoch(epoch)
        method.on_epoch_start(ctx)
    fresh = _method(tiny_backbone)
    fresh.load_state_dict({k: v.detach().clone() for k, v in method.state_dict().items()})
    assert torch.equal(fresh.assignment, method.assignment) and int(fresh.active) == int(method.active) == 2


def _epochs(method, ctx, n: int) -> list[int]:
    active = []
    for epoch in range(n):
        ctx.begin_epoch(epoch)
        method.on_epoch_start(ctx)
        active.append(int(method.active))
    return active


def test_merge_stage_keeps_per_cluster_batches_and_trains_the_full_embedding(tiny_backbone, simple_context):
    """As the authors' merge_dataloaders: after the merge every batch still comes from one cluster, round-robin;
    the loss is on the full embedding (no mask receives a gradient)."""
    images, labels = _data()
    method = _method(tiny_backbone, num_clusters=2, full_embedding_epoch=3, mask_lambda=0.0)
    ctx = simple_context(method, images, labels, epochs=4)
    assert _epochs(method, ctx, 4) == [1, 1, 2, 2]
    assert method._full
    assign = method.assignment.numpy()
    batches = list(method.batch_sampler(labels, BatchConfig(classes_per_batch=3, samples_per_class=2), 3, 6))
    for b, idx in enumerate(batches):
        assert (assign[idx] == b % 2).all()
    method.train()
    x, y = ctx.load(batches[0])
    method.zero_grad()
    out = method.learner_loss(method(x), y, method.current_cluster(ctx))
    out["loss"].backward()
    assert method.current_cluster(ctx) is None and "mask_ortho" not in out
    assert method.masks.grad is None or float(method.masks.grad.abs().sum()) == 0.0


def test_merge_batches_all_and_stop_recluster_options(tiny_backbone, simple_context):
    images, labels = _data()
    method = _method(tiny_backbone, num_clusters=2, full_embedding_epoch=3, merge_batches="all")
    ctx = simple_context(method, images, labels, epochs=6)
    _epochs(method, ctx, 4)
    batches = list(method.batch_sampler(labels, BatchConfig(classes_per_batch=6, samples_per_class=2), 3, 8))
    assert len({c for idx in batches for c in method.assignment.numpy()[idx]}) == 2  # batches mix the clusters
    assert ctx.lr_of("backbone") == pytest.approx(1e-3)
    stop = _method(tiny_backbone, num_clusters=2, stop_recluster=True, full_embedding_epoch=10)
    ctx = simple_context(stop, images, labels, epochs=10)
    lrs = []
    for epoch in range(6):
        ctx.begin_epoch(epoch)
        before = stop.assignment.clone()
        stop.on_epoch_start(ctx)
        lrs.append(ctx.lr_of("backbone"))
        if epoch >= 3:  # K reached at epoch 2: no re-clustering, no freezing from epoch 3 on
            assert torch.equal(before, stop.assignment)
    assert lrs == [0, 1e-3, 0, 1e-3, 1e-3, 1e-3]


def test_conference_version_slices_and_full_test_embedding(tiny_backbone, simple_context):
    images, labels = _data()
    method = _method(tiny_backbone, version="conference")
    ctx = simple_context(method, images, labels)
    ctx.begin_epoch(0)
    method.on_epoch_start(ctx)
    assert int(method.active) == 4 and ctx.lr_of("backbone") == pytest.approx(1e-3)  # flat K, no freezing
    assert not method.masks.requires_grad
    method.eval()
    with torch.no_grad():
        emb = method(images[:3])
        torch.testing.assert_close(method.learner_embedding(emb, 1), torch.nn.functional.normalize(emb[:, 4:8], dim=-1))
        torch.testing.assert_close(method.embed(images[:3]), torch.nn.functional.normalize(emb, dim=-1))
    with pytest.raises(ValueError, match="divisible"):
        METHODS["divide_conquer"](DivideConquerParams(version="conference", num_clusters=3), tiny_backbone(), 16, 12)


def test_clusters_follow_feature_directions_not_norms(tiny_backbone, simple_context):
    """Both codebases k-means L2-normalised penultimate features. Classes 0-1 point one way, 2-3 30° away; classes
    1 and 3 have 10× the norm: unnormalised, 2-means splits by norm ({0, 2} / {1, 3}); normalised, by direction."""
    labels = np.repeat(np.arange(4), 6)
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.cos(np.pi / 6) * np.eye(8)[0] + np.sin(np.pi / 6) * np.eye(8)[1]
    directions = np.stack([a, a, b, b])[labels]
    norms = np.array([1.0, 10.0, 1.0, 10.0])[labels][:, None]
    features = (directions + rng.normal(0, 0.02, directions.shape)) * norms
    method = _method(tiny_backbone, version="conference", num_clusters=2, kmeans_niter=50, kmeans_nredo=10)
    ctx = simple_context(method, torch.zeros(len(labels), 3, 8, 8), labels)
    ctx.extract = lambda fn, batch_size=None: features.astype(np.float32)
    ctx.begin_epoch(0)
    method.recluster(ctx)
    assign = method.assignment.numpy()
    by_class = [set(assign[labels == c]) for c in range(4)]
    assert all(len(s) == 1 for s in by_class)
    assert by_class[0] == by_class[1] and by_class[2] == by_class[3] and by_class[0] != by_class[2]
