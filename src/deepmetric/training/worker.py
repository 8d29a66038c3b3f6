"""torchrun's entry for training: ``python -m deepmetric.training.worker [options] RUN_DIR`` (or ``--join``).

Started by `deepmetric.training.launch.launch` (the train stage) on the launching machine, and by hand with
``--join`` on the other machines of a multi-node run. Imports neither Kedro nor the pipelines: a rank never
starts a Kedro session. The ranks that have ``RUN_DIR`` (the launching machine's) send the validated
configuration and the manifest to the others; every rank trains its share of each global batch; rank 0 writes
the checkpoints and ``RUN_DIR/result.pt`` (the trained model payload and the log), which the train stage returns.

A rank that seems stuck prints the stack of every one of its threads to its stderr (the train stage's log) on
SIGUSR1 (``kill -USR1 <pid>``) and goes on.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

log = logging.getLogger("deepmetric.training.worker")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deepmetric.training.worker", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="the run folder written by the train stage")
    p.add_argument("--join", action="store_true", help="no run folder here: receive the run from the other ranks")
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout-s", type=int, default=1800)
    args = p.parse_args(argv)
    if (args.run_dir is None) == (not args.join):
        p.error("give either RUN_DIR or --join")
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    # torchrun stops the surviving ranks with SIGTERM when one fails: unwind, so that `finally` blocks (atomic
    # writes' temporary files) run.
    raise SystemExit(128 + signum)


def _exchange_spec(dist, local: tuple[str, bytes] | None) -> tuple[int, str, bytes]:
    """(source rank, spec JSON, manifest parquet bytes) on every rank, from the lowest rank that has them."""
    have = dist.all_gather_object(local is not None)
    if not any(have):
        raise RuntimeError("no rank was given a run folder: start the run with `kedro run --pipelines train` "
                           "(or `python -m deepmetric.training.worker RUN_DIR` on one machine)")
    src = have.index(True)
    spec_json, manifest_bytes = dist.broadcast_object(local if dist.rank == src else None, src=src)
    return src, spec_json, manifest_bytes


@record
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where a stuck rank waits, without stopping it
    from deepmetric.training.distributed import Distributed

    dist = Distributed.from_env(backend=args.backend, device=args.device, timeout_s=args.timeout_s)
    logging.basicConfig(level=logging.WARNING, format=f"[rank {dist.rank}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("deepmetric").setLevel(logging.INFO if dist.is_main else logging.WARNING)
    try:
        import pandas as pd

        from deepmetric.training.config import InputConfig, parse, parse_train
        from deepmetric.training.launch import MANIFEST_FILE, SPEC_FILE, RunSpec, write_result
        from deepmetric.training.loop import fit

        local = None
        if args.run_dir is not None:
            local = ((args.run_dir / SPEC_FILE).read_text(), (args.run_dir / MANIFEST_FILE).read_bytes())
        src, spec_json, manifest_bytes = _exchange_spec(dist, local)
        spec = RunSpec.from_json(spec_json)
        manifest = pd.read_parquet(io.BytesIO(manifest_bytes))
        cfg, params = parse_train(spec.train)
        model = parse(InputConfig, spec.model, "model")
        dist.gather_embeddings = cfg.distributed.gather_embeddings
        if dist.is_main:
            log.info("%d ranks (%s, %s), global batch %d = %d per rank", dist.world_size, dist.backend,
                     dist.device, cfg.batch.size, cfg.batch.size // dist.world_size)
        from deepmetric.training.callbacks import LiveLog

        result = fit(manifest, spec.root, cfg, params, model, checkpoint_dir=spec.checkpoint_dir,
                     limits=spec.limits, cache_dir=spec.cache_dir, strategy=dist,
                     callbacks=[LiveLog(spec.live_dir)] if spec.live_dir else ())
        out = None
        if dist.is_main:
            out = {"payload": result.payload, "log": result.log, "resumed_from": result.resumed_from,
                   "world_size": dist.world_size, "kedro_loaded": "kedro" in sys.modules}
        if src != 0:  # rank 0 is not on the launching machine (c10d rendezvous): send it the result
            out = dist.broadcast_object(out, src=0)
        if args.run_dir is not None and out is not None and dist.local_rank == 0:
            write_result(args.run_dir, out)
        dist.barrier()
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
