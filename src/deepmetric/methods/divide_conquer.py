"""Divide and Conquer the embedding space (Sanakoyeu et al., CVPR 2019; TPAMI 2021) — `train.method: divide_conquer`.

The training data are clustered (k-means on the backbone's penultimate, pooled features) into K groups and the
embedding is divided into K learners; learner k is trained only on batches from cluster k (margin loss with
distance-weighted sampling on its own L2-normalised sub-embedding). Clusters are recomputed every
`recluster_every` epochs and re-matched to learners with the Hungarian algorithm so that each learner keeps its
region of the data. One class-balanced sampler per cluster, interleaved round-robin. From `full_embedding_epoch`
on the full embedding is trained ("conquer"), still on the per-cluster batches and with the same re-clustering and
freezing schedule, as the authors' TPAMI code (`merge_dataloaders`); the test embedding is always the full one.

- `version: journal` (TPAMI 2021, the default): learners are learnable masks m_k (ReLU(m_k) ⊙ embedding, initialised
  to ones) with an orthogonality term on the masks; clusters are built hierarchically 1 → 2 → 4 → … → K by splitting
  every cluster in two at each re-clustering after the first (the first period is a single-learner warm-up;
  retrying seeds until each child has ≥ 2 classes with ≥ 2 images); the backbone's lr is 0 in the epoch after
  each re-clustering. Masks have their own absolute lr (`mask_lr`, 1e-3 = the TPAMI command's 100 × 1e-5).
- `version: conference` (CVPR 2019): learners are fixed contiguous slices of size D/K, flat k-means into K.

See `docs/methods/divide_conquer.md`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from deepmetric.methods.base import BatchConfig, Method, MethodParams, class_balanced_batches, register
from deepmetric.methods.losses import MarginParams, distance_weighted_miner, margin_loss

log = logging.getLogger(__name__)


class DivideConquerParams(MarginParams):
    # Margin loss + distance-weighted sampling (the TPAMI code): β 1.2 fixed (not in the optimiser unless
    # lr_beta > 0), γ 0.2, negatives clamped at ≥ 0.5 and only those with d < β + γ = 1.4.
    learn_beta: bool = Field(False, description="β is a fixed 1.2 in both codebases (lr_beta = 0)")
    version: Literal["journal", "conference"] = "journal"
    # CVPR released commands: K = 8; TPAMI sample command (SOP): K = 32 (per-dataset values unconfirmed).
    num_clusters: int = Field(8, ge=1, le=256, description="K, the number of clusters / learners")
    recluster_every: int = Field(2, ge=1, description="re-cluster every this many epochs (mod_epoch = 2)")
    # TPAMI mod_epoch_freeze = 1; the CVPR code never froze the backbone. null: the version's default.
    freeze_epochs: int | None = Field(None, ge=0, description="backbone lr 0 for this many epochs after re-clustering")
    # TPAMI force_full_embedding_epoch = 80 (of 180); CVPR finetune_epoch = 190 (of 200). A value below 1 is a
    # fraction of train.epochs (handy for short runs).
    full_embedding_epoch: float = Field(80, ge=0, description="epoch (or fraction of train.epochs if < 1) to merge")
    mask_lambda: float = Field(0.01, ge=0, description="weight of the mask orthogonality term (masking_lambda)")
    # Absolute: the masks start at 1 and die under the ReLU once ≤ 0, so their step size must not follow the
    # backbone's lr (TPAMI sample command: mask_lr_mult 100 × base lr 1e-5).
    mask_lr: float = Field(1e-3, gt=0, description="lr of the masks (absolute)")
    mask_wd_mult: float = Field(1.0, ge=0, description="mask weight decay = weight_decay × this")
    dropout: float = Field(0.01, ge=0, lt=1, description="dropout before the embedding layer")
    kmeans_niter: int = Field(100, ge=1)
    kmeans_nredo: int = Field(5, ge=1)
    kmeans_seed: int = Field(0, description="faiss k-means seed (fixed, as the papers' code)")
    kmeans_vary_seed: bool = Field(False, description="seed + epoch, so re-clustering does not re-pick centroids")
    split_retries: int = Field(30, ge=1, description="seeds tried per 2-way split (TPAMI: 30)")
    # The TPAMI code keeps the per-cluster loaders (merge_dataloaders), the re-clustering and the freezing after
    # the merge; `all`: class-balanced batches over all data from the merge on, no more re-clustering.
    merge_batches: Literal["clusters", "all"] = Field("clusters", description="batches of the merge stage")
    stop_recluster: bool = Field(False, description="stop re-clustering/freezing once K is reached (--stop-recluster)")

    @model_validator(mode="after")
    def _freeze(self) -> DivideConquerParams:
        if self.freeze_epochs is None:
            self.freeze_epochs = 1 if self.version == "journal" else 0
        if self.freeze_epochs >= self.recluster_every and self.freeze_epochs > 0:
            raise ValueError(
                f"freeze_epochs {self.freeze_epochs} must be smaller than recluster_every {self.recluster_every}"
            )
        return self


# --- clustering -------------------------------------------------------------------------------------------------

def kmeans(features: np.ndarray, k: int, seed: int, niter: int = 100, nredo: int = 5) -> np.ndarray:
    """faiss k-means → cluster id per row."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=int(seed) % (2**31), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=100_000)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def match_clusters(previous: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """Relabel `new` so that cluster j is the new cluster most similar to previous cluster j (Hungarian).

    Cost of pairing previous cluster i with new cluster j = L1 distance between their membership indicator
    vectors (the number of samples in exactly one of the two).
    """
    from scipy.optimize import linear_sum_assignment

    prev_onehot = np.zeros((k, len(previous)), dtype=np.int64)
    new_onehot = np.zeros((k, len(new)), dtype=np.int64)
    ok = previous >= 0
    prev_onehot[previous[ok], np.nonzero(ok)[0]] = 1
    new_onehot[new, np.arange(len(new))] = 1
    # |a − b|₁ = |a| + |b| − 2 a·b for 0/1 vectors
    cost = prev_onehot.sum(1)[:, None] + new_onehot.sum(1)[None, :] - 2 * prev_onehot @ new_onehot.T
    rows, cols = linear_sum_assignment(cost)
    mapping = np.empty(k, dtype=np.int64)
    mapping[cols] = rows  # new cluster cols[i] becomes learner rows[i]
    return mapping[new]


def has_enough_classes(labels: np.ndarray) -> bool:
    """≥ 2 classes with ≥ 2 images each (so every learner can form positive pairs)."""
    _, counts = np.unique(labels, return_counts=True)
    return int((counts >= 2).sum()) >= 2


def split_clusters(
    features: np.ndarray, assignment: np.ndarray, labels: np.ndarray, target: int, seed: int,
    retries: int = 30, niter: int = 100,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Split clusters in two (largest first) until there are `target` clusters, or none can be split.

    Each 2-means split is retried with new seeds until both children hold ≥ 2 classes with ≥ 2 images; a cluster
    that never splits that way stays whole. Returns the new assignment and the (parent, child) learner pairs:
    the first child keeps the parent's id, the second gets the next free id.
    """
    assignment = assignment.copy()
    current = int(assignment.max()) + 1
    order = sorted(range(current), key=lambda c: -int((assignment == c).sum()))
    splits: list[tuple[int, int]] = []
    for parent in order:
        if current >= target:
            break
        members = np.nonzero(assignment == parent)[0]
        for attempt in range(retries):
            sub = kmeans(features[members], 2, seed + 1000 * parent + attempt, niter=niter, nredo=1)
            if has_enough_classes(labels[members[sub == 0]]) and has_enough_classes(labels[members[sub == 1]]):
                assignment[members[sub == 1]] = current
                splits.append((parent, current))
                current += 1
                break
        else:
            log.info("divide_conquer: cluster %d (%d images) could not be split in %d tries", parent,
                     len(members), retries)
    return assignment, splits


def trainable_mask(assignment: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """False for samples whose class has a single image inside its cluster (no positive there: dropped)."""
    keep = np.zeros(len(assignment), dtype=bool)
    for c in np.unique(assignment[assignment >= 0]):
        idx = np.nonzero(assignment == c)[0]
        cls, inv, counts = np.unique(labels[idx], return_inverse=True, return_counts=True)
        keep[idx] = counts[inv] >= 2
    return keep


def cluster_batches(
    indices: np.ndarray, labels: np.ndarray, batch: BatchConfig, rng: np.random.Generator, num_batches: int
) -> list[list[int]]:
    """Class-balanced batches (P classes × K images) inside one cluster; small clusters are handled by
    drawing fewer classes, sampling a class with replacement when it has fewer than K images, and topping the
    batch up with other random images of the cluster (TPAMI's adaptive balanced sampler)."""
    by_class: dict[int, np.ndarray] = {}
    for c in np.unique(labels[indices]):
        by_class[int(c)] = indices[labels[indices] == c]
    classes = np.array(sorted(by_class))
    k = batch.samples_per_class
    out = []
    for _ in range(num_batches):
        n_cls = min(batch.classes_per_batch, len(classes), batch.size // k)
        chosen = rng.choice(classes, size=n_cls, replace=False)
        picks: list[int] = []
        for c in chosen:
            pool = by_class[int(c)]
            picks.extend(rng.choice(pool, size=k, replace=len(pool) < k).tolist())
        if len(picks) < batch.size:
            picks.extend(rng.choice(indices, size=batch.size - len(picks), replace=len(indices) < batch.size).tolist())
        out.append(picks[: batch.size])
    return out


def mask_orthogonality(masks: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity between ReLU(m_i) and ReLU(m_j), i ≠ j (0 for a single mask)."""
    k = masks.shape[0]
    if k < 2:
        return masks.sum() * 0.0
    m = F.normalize(F.relu(masks), dim=1)
    sim = m @ m.T
    off = ~torch.eye(k, dtype=torch.bool, device=masks.device)
    return sim[off].mean()


# --- the method -------------------------------------------------------------------------------------------------

@register(
    "divide_conquer",
    kind="seed",
    paper="Sanakoyeu, Tschernezki, Büchler, Ommer: Divide and Conquer the Embedding Space for Metric Learning "
    "(CVPR 2019); Sanakoyeu, Ma, Tschernezki, Ommer: Improving Deep Metric Learning by Divide and Conquer (TPAMI 2021)",
    doc="docs/methods/divide_conquer.md",
)
class DivideConquerMethod(Method):
    Params = DivideConquerParams

    def __init__(self, params: DivideConquerParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        k = params.num_clusters
        embedding_dim = self.embedding_dim
        if params.version == "conference" and embedding_dim % k:
            raise ValueError(f"divide_conquer (conference): embedding_dim {embedding_dim} is not divisible by K={k}")
        self.drop = nn.Dropout(params.dropout)
        if params.version == "conference" and isinstance(self.head, nn.Linear):
            # each slice initialised on its own (Xavier-normal, gain 1), as the CVPR code
            with torch.no_grad():
                for w in self.head.weight.split(embedding_dim // k, dim=0):
                    nn.init.xavier_normal_(w)
        self.masks = nn.Parameter(torch.ones(k, embedding_dim), requires_grad=params.version == "journal")

        def criterion() -> nn.Module:
            return margin_loss(params, num_classes)

        self.criteria = nn.ModuleList(criterion() for _ in range(k + 1))  # one per learner + the merged embedding
        self.miner = distance_weighted_miner(params)
        # State that must survive a checkpoint: cluster id per training image (−1: none yet) and the number of
        # clusters in use.
        self.register_buffer("assignment", torch.full((0,), -1, dtype=torch.long))
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        self._epoch_start_step = 0
        self._full = False

    # --- declarations ---------------------------------------------------------------------------------------
    @classmethod
    def backbone_options(cls, params: MethodParams) -> dict[str, Any]:
        # ResNet-50 with BatchNorm statistics frozen (eval mode; γ/β still train, as `model/resnet.py` of both
        # codebases), average pooling (docs/methods/divide_conquer.md).
        return {"pool": "avg", "frozen_bn": "stats"}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        p = self.params
        groups = super().param_groups(lr, weight_decay)
        if p.version == "journal":
            groups.append({"name": "masks", "params": [self.masks], "lr": p.mask_lr,
                           "weight_decay": weight_decay * p.mask_wd_mult})
        return groups + p.loss_group([q for c in self.criteria for q in c.parameters()], lr)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the assignment buffer is sized by the training set: take the checkpoint's size
        key = prefix + "assignment"
        if key in state_dict and state_dict[key].shape != self.assignment.shape:
            self.assignment = torch.empty_like(state_dict[key], device=self.assignment.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def full_embedding_start(self, epochs: int) -> int:
        e = self.params.full_embedding_epoch
        return int(round(e * epochs)) if e < 1 else int(e)

    # --- per-epoch hook -------------------------------------------------------------------------------------
    def on_epoch_start(self, ctx) -> None:
        p = self.params
        self._epoch_start_step = ctx.step
        self._full = ctx.epoch >= self.full_embedding_start(ctx.epochs) or p.num_clusters == 1
        if self._full and p.version == "journal":
            ctx.set_lr_scale("masks", 0.0)  # the masks leave the forward pass and the optimiser
        if p.num_clusters == 1 or (self._full and p.merge_batches == "all"):
            return
        if p.stop_recluster and self._divided(ctx.epoch) and self.assignment.numel() == len(ctx.labels):
            return  # --stop-recluster: clusters, and the backbone, stay as they are from here on
        since = ctx.epoch % p.recluster_every
        if since == 0 or self.assignment.numel() != len(ctx.labels):
            self.recluster(ctx)
        if since < p.freeze_epochs:
            ctx.set_lr_scale("backbone", 0.0)  # only the embedding (and masks) train in this epoch

    def _divided(self, epoch: int) -> bool:
        """All K clusters exist (journal) / the first freeze period is over (conference)."""
        if self.params.version == "journal":
            return int(self.active) >= self.params.num_clusters
        return int(self.active) > 0 and epoch >= self.params.freeze_epochs

    @torch.no_grad()
    def recluster(self, ctx) -> None:
        p = self.params
        labels = np.asarray(ctx.labels)
        # penultimate (pooled backbone) features, L2-normalised as both codebases do (`forward(use_penultimate=True)`
        # ends in F.normalize): k-means then partitions directions, not feature norms
        features = ctx.extract(self.backbone)
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        seed = p.kmeans_seed + (ctx.epoch if p.kmeans_vary_seed else 0)
        previous = self.assignment.cpu().numpy()
        first = previous.size != len(labels) or previous.max(initial=-1) < 0
        if p.version == "conference":
            k = p.num_clusters
        else:
            k = 1 if first else int(self.active)
        new = kmeans(features, k, seed, p.kmeans_niter, p.kmeans_nredo)
        if not first:
            new = match_clusters(previous, new, k)
        if p.version == "journal" and k < p.num_clusters and ctx.epoch > 0:
            # as the TPAMI code (`e > 0`): the first period trains a single learner, splits start after it
            new, splits = split_clusters(features, new, labels, p.num_clusters, seed, p.split_retries, p.kmeans_niter)
            for parent, child in splits:
                self.masks.data[child] = self.masks.data[parent]  # children start from the parent's mask
            k = int(new.max()) + 1
        self.assignment = torch.as_tensor(new, dtype=torch.long, device=self.assignment.device)
        self.active.fill_(k)
        sizes = np.bincount(new, minlength=k).tolist()
        log.info("divide_conquer: epoch %d, %d clusters, sizes %s", ctx.epoch, k, sizes)

    # --- batches --------------------------------------------------------------------------------------------
    def batch_sampler(self, labels: np.ndarray, batch: BatchConfig, seed: int, num_batches: int) -> Iterator[list[int]]:
        labels = np.asarray(labels)
        merged_all = self._full and (self.params.merge_batches == "all" or self.params.num_clusters == 1)
        if merged_all or self.assignment.numel() != len(labels):
            return class_balanced_batches(labels, batch, seed, num_batches)
        assignment = self.assignment.cpu().numpy()
        keep = trainable_mask(assignment, labels)
        k = int(self.active)
        rng = np.random.default_rng(seed)
        per_cluster = []
        for c in range(k):
            idx = np.nonzero((assignment == c) & keep)[0]
            if len(idx) == 0:  # a cluster left without positives (k-means can empty one): its learner sees all
                idx = np.nonzero(keep)[0] if keep.any() else np.arange(len(labels))
            n = len(range(c, num_batches, k))
            per_cluster.append(iter(cluster_batches(idx, labels, batch, rng, n)))
        # round-robin: batch b comes from cluster b mod k (training_step relies on this order)
        return iter([next(per_cluster[b % k]) for b in range(num_batches)])

    def current_cluster(self, ctx) -> int | None:
        """The cluster of the batch being trained: the round-robin position within the epoch."""
        if self._full or int(self.active) == 0:
            return None
        return (ctx.step - self._epoch_start_step) % int(self.active)

    # --- training -------------------------------------------------------------------------------------------
    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def learner_embedding(self, emb: torch.Tensor, k: int) -> torch.Tensor:
        """Learner k's sub-embedding, L2-normalised on its own."""
        if self.params.version == "conference":
            size = self.embedding_dim // self.params.num_clusters
            return F.normalize(emb[:, k * size : (k + 1) * size], dim=-1)
        return F.normalize(emb * F.relu(self.masks[k]), dim=-1)

    def learner_loss(self, emb: torch.Tensor, labels: torch.Tensor, k: int | None) -> dict[str, torch.Tensor]:
        if k is None:
            e = F.normalize(emb, dim=-1)
            return {"loss": self.criteria[-1](e, labels, self.miner(e, labels))}
        e = self.learner_embedding(emb, k)
        margin = self.criteria[k](e, labels, self.miner(e, labels))
        out = {"loss": margin, "margin": margin}
        if self.params.version == "journal" and self.params.mask_lambda > 0:
            ortho = mask_orthogonality(self.masks[: int(self.active)])
            out["loss"] = margin + self.params.mask_lambda * ortho
            out["mask_ortho"] = ortho
        return out

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.learner_loss(embeddings, labels, None)["loss"]

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, ctx) -> dict[str, float]:
        emb, labels = ctx.gather(self(images), labels)
        out = self.learner_loss(emb, labels, self.current_cluster(ctx))
        ctx.optimizer_step(out["loss"])
        return {k: float(v.detach()) for k, v in out.items()}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedding(x), dim=-1)  # the full embedding, without masks
