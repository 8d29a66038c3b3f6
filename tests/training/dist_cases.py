"""The gather-equivalence case: one optimiser step of a method on a global batch, in one process or as ranks.

Run under torchrun (``python -m torch.distributed.run --standalone --nproc-per-node 2 -m
tests.training.dist_cases OUT_DIR``), every rank trains its share of the same global batch through the real
`Distributed` (gloo all-gather, `GradientSync`) and saves its loss and parameters to ``OUT_DIR``; the test
computes the one-process step on the whole batch (`reference_step`) and compares.

BatchNorm: the backbone's BatchNorm is frozen (eval-mode running statistics), so a rank's half batch is
normalised exactly as in the full batch; with trainable BatchNorm each rank normalises with its own half's
statistics, as in any data-parallel run. BatchNorm layers after the gather (intra_batch's BN neck) see the
global batch on every rank and need nothing.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from deepmetric.training.config import parse_train
from deepmetric.training.distributed import Distributed
from deepmetric.training.model_io import build_method

P, K, EMB, CLASSES, LR = 4, 4, 16, 8, 0.05
SEED, EPOCH, STEP = 0, 12345, 7  # the step of a run seeded 0, in epoch 12345
METHODS = {
    "margin": {},
    "ranked_list": {},
    "intra_batch": {},  # dropout 0.1 in the MPN, after the gather: same draws on every rank
    "divide_conquer": {"dropout": 0.0, "num_clusters": 1},  # dropout before the gather would differ by rank
    "sharing": {"adv_weight": 5.0},
    # Adam: its first step skips a parameter without a gradient (Sharing's shared β in the class step) but would
    # move one whose gradient is zero, so this checks that the averaged gradient of an unused parameter stays None.
    "sharing/adam": {"adv_weight": 5.0},
}
# With gathering off, each rank's loss sees only its half: the update must differ (the test can fail).
NO_GATHER = "margin"


def build_case(name: str):
    """(method, global images, global labels): identical in every process."""
    name, _, _ = name.partition("/")
    torch.manual_seed(0)
    cfg, params = parse_train({
        "method": name, "embedding_dim": EMB, "batch": {"classes_per_batch": P, "samples_per_class": K},
        "backbone": {"name": "resnet18", "frozen_bn": True}, "methods": {name: METHODS[name]},
    })
    method = build_method(cfg, params, CLASSES).train()
    g = torch.Generator().manual_seed(1)
    n = P * K * method.batch_sections
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.arange(P).repeat_interleave(K)  # the class-balanced P × K layout of the sampler
    if method.batch_sections == 2:  # Sharing: + a surrogate batch, groups of 4 images of distinct classes
        labels = torch.cat([labels, torch.arange(P * K) % CLASSES])
    return method, images, labels


def make_optimizer(method, kind: str = "sgd") -> torch.optim.Optimizer:
    # plain SGD: the update is lr × gradient, so a wrong gradient scale shows up (Adam would normalise it away)
    groups = [g for g in method.param_groups(LR, 0.0) if g["params"]]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    groups = [g for g in groups if g["params"]]
    return torch.optim.Adam(groups, lr=1e-3) if kind == "adam" else torch.optim.SGD(groups, lr=LR)


class RankContext:
    """What the training loop's context does with several processes: gather, and average gradients."""

    def __init__(self, method, dist: Distributed, optimizer: str = "sgd") -> None:
        self.method, self.dist = method, dist
        self.optimizer = make_optimizer(method, optimizer)
        self.sync = dist.gradient_sync(method.parameters())
        self.device, self.epoch, self.epochs, self.step, self.seed = torch.device("cpu"), 0, 1, STEP, 0

    def gather(self, *tensors):
        return self.dist.gather(*tensors)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.sync or contextlib.nullcontext():
            loss.backward()
        self.optimizer.step()


def reference_step(name: str) -> tuple[float, dict[str, torch.Tensor]]:
    """One process (a single-rank `Distributed`), the whole batch."""
    return rank_step(name, Distributed())


def rank_step(name: str, dist: Distributed) -> tuple[float, dict[str, torch.Tensor]]:
    method, images, labels = build_case(name)
    mine = dist.share(range(len(labels)), sections=method.batch_sections)
    dist.begin_step(SEED, EPOCH, STEP)
    ctx = RankContext(method, dist, "adam" if name.endswith("/adam") else "sgd")
    stats = method.training_step(images[mine], labels[mine], ctx)
    return stats["loss"], {k: v.detach().clone() for k, v in method.state_dict().items()}


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist = Distributed.from_env(backend="gloo", device="cpu")
    try:
        for name in METHODS:
            loss, state = rank_step(name, dist)
            torch.save({"loss": loss, "state": state}, Path(out) / f"{name.replace('/', '_')}_rank{dist.rank}.pt")
        dist.gather_embeddings = False
        loss, state = rank_step(NO_GATHER, dist)
        torch.save({"loss": loss, "state": state}, Path(out) / f"{NO_GATHER}_nogather_rank{dist.rank}.pt")
    finally:
        dist.close()


if __name__ == "__main__":
    main(sys.argv[1])
