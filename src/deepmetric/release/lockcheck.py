"""Is the committed ``dvc.lock`` current for the committed code and parameters? (`python -m
deepmetric.release.lockcheck`, run by ``.ci/run``.)

``dvc.lock`` records, per stage, the hash of every dependency the outputs were built from; the README's figures
and every release's provenance come from it. When code or a parameter changes and nobody reruns the pipeline, a
fresh clone's ``dvc repro`` retrains and gets other figures than the README quotes. This check is cheap: DVC's
own status, reading only what a clone has — the dependencies git tracks (code, presets, parameter files) and the
stage definitions in ``dvc.yaml``. Data and outputs (DVC-managed, absent from a fresh clone) are not read and never
rebuilt; nothing is trained.

Exit 0: current. Exit 1: stale, with one line per stage naming what changed and the command to run. Exit 2:
not a DVC project, or DVC failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["stale_stages", "main"]


def _git_tracked(root: Path, path: str) -> bool:
    proc = subprocess.run(["git", "ls-files", "--", path], cwd=root, capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def stale_stages(root: str | Path = ".") -> dict[str, list[str]]:
    """``{stage: [what changed, …]}`` for every stage whose committed lock entry does not match the code,
    parameters or definition of the work tree at ``root``; empty when the lock is current. A change counts when
    it is to a dependency or output git tracks, to a parameter, or to the stage's definition (its command, its
    list of dependencies or outputs); a missing data dependency or DVC-cached output does not (a fresh clone has
    none)."""
    from dvc.repo import Repo

    root = Path(root)
    with Repo(str(root)) as repo:
        status: dict[str, list[Any]] = repo.status()
    tracked: dict[str, bool] = {}
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        reasons = []
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "changed checksum" (the stage's definition)
                reasons.append(f"{entry.removeprefix('changed ')} in dvc.yaml")
                continue
            for path, change in entry.get("changed deps", {}).items():
                if isinstance(change, dict):  # a parameter file: {key: "modified" | "new" | "deleted"}
                    reasons += [f"parameter {path}:{key} {how}" for key, how in sorted(change.items())]
                elif tracked.setdefault(path, _git_tracked(root, path)):
                    reasons.append(f"{path} {change}")
            for path, change in entry.get("changed outs", {}).items():  # an output committed to git (a report)
                if tracked.setdefault(path, _git_tracked(root, path)):
                    reasons.append(f"output {path} {change} (not the file dvc.lock records)")
        if reasons:
            stale[stage.split(":")[-1]] = reasons
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepmetric.release.lockcheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=".", help="the project (default: the current directory)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not (root / "dvc.yaml").is_file():
        print(f"error: {root.resolve()} has no dvc.yaml", file=sys.stderr)
        return 2
    try:
        stale = stale_stages(root)
    except Exception as e:  # DVC's own errors (a malformed dvc.yaml, a missing lock): say so, no traceback
        print(f"error: dvc status failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not stale:
        print("dvc.lock is current: every stage was built from the committed code and parameters")
        return 0
    lines = [f"error: dvc.lock is stale: {len(stale)} stage(s) were not rebuilt after their code or parameters "
             f"changed, so a fresh clone's `dvc repro` gives other outputs and figures than the committed ones:"]
    lines += [f"  {stage}: {'; '.join(reasons)}" for stage, reasons in stale.items()]
    lines.append(f"run `dvc repro {' '.join(stale)}` (or `make repro`), then commit dvc.lock and the metrics, and "
                 f"update the README figures from them")
    print("\n".join(lines), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
