"""Pinned training trajectories: a few steps of margin and of each seed method through the real training loop, in
one process or as 2 gloo ranks under torchrun, reduced to the sha256 of the trained weights.

``python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.training.trajectory_cases DATA OUT``
trains every case as 2 ranks and writes rank 0's digests to ``OUT/digests.json``; `weights_digest` and `train_case`
are what the in-process (1-process) side uses. Any change of behaviour changes the digests recorded in
`tests/training/test_trajectory.py`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from deepmetric.methods import METHODS as REGISTRY
from deepmetric.training.config import InputConfig, parse_train

METHODS = ("margin", *REGISTRY.names(kind="seed"))
BLOCKS = {"divide_conquer": {"num_clusters": 2, "kmeans_niter": 5, "kmeans_nredo": 1}, "intra_batch": {"mpn_heads": 2}}
SPEC = InputConfig(resize=32, crop=32)


def config(method: str):
    return parse_train({
        "method": method, "seed": 3, "epochs": 2, "steps_per_epoch": 2, "embedding_dim": 16, "progress": False,
        "device": "cpu", "num_workers": 0, "batch": {"classes_per_batch": 4, "samples_per_class": 2},
        "eval_batch_size": 32, "backbone": {"name": "resnet18"}, "methods": {method: BLOCKS.get(method, {})},
    })


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict: every entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def main(data: str, out: str) -> None:
    from deepmetric.training.distributed import Distributed
    from deepmetric.training.loop import fit

    torch.set_num_threads(1)
    manifest = pd.read_parquet(Path(data) / "manifest.parquet")
    dist = Distributed.from_env(backend="gloo", device="cpu")
    digests = {}
    try:
        for method in METHODS:
            cfg, params = config(method)
            res = fit(manifest, data, cfg, params, SPEC, strategy=dist)
            if dist.is_main:
                digests[method] = weights_digest(res.payload["state_dict"])
    finally:
        dist.close()
    if dist.is_main:
        (Path(out) / "digests.json").write_text(json.dumps(digests, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
