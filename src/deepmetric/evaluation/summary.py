"""The short results table `make repro` ends with: the trained embedding next to its baselines.

``python -m deepmetric.evaluation.summary [reporting-dir]`` reads ``metrics.json`` and ``baselines.json`` (what the
evaluate stage wrote; `dvc metrics show` shows the same numbers in full) and prints MAP@R, Recall@1 and NMI of the
trained model, the raw-pixel baseline and the untrained (or pretrained-only) network, in percent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (("map@r", "MAP@R"), ("recall@1", "R@1"), ("nmi", "NMI"))
ROWS = (("trained", "trained"), ("pixels", "raw pixels"), ("untrained", "untrained network"),
        ("pretrained", "pretrained only"))


def summary_table(reporting: str | Path = "data/08_reporting") -> str:
    """A plain-text table; raises FileNotFoundError naming the missing file."""
    reporting = Path(reporting)
    metrics_path, baselines_path = reporting / "metrics.json", reporting / "baselines.json"
    for p in (metrics_path, baselines_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: run the evaluate stage first (`dvc repro`)")
    metrics = json.loads(metrics_path.read_text())
    baselines = json.loads(baselines_path.read_text())
    baselines["trained"] = {k: metrics[k] for k, _ in COLUMNS if k in metrics}
    width = max(len(label) for _, label in ROWS)
    lines = [f"{'embedding':<{width}}  " + "  ".join(f"{h:>6}" for _, h in COLUMNS)]
    lines.append("-" * len(lines[0]))
    for key, label in ROWS:
        if key not in baselines:
            continue
        row = baselines[key]
        cells = [f"{100 * row[k]:6.1f}" if isinstance(row.get(k), (int, float)) else f"{'-':>6}" for k, _ in COLUMNS]
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    n = metrics.get("num_queries")
    note = f"zero-shot on the test classes ({n} queries)" if n else "zero-shot on the test classes"
    return "\n".join([note, *lines])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        print(summary_table(args[0] if args else "data/08_reporting"))
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        print(f"deepmetric summary: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
