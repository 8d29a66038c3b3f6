"""`deepmetric embed --bundle DIR <folder|table> --out embeddings.parquet`: the embedding of every image of a folder
or a table with the bundle's model (`deepmetric.index.bulk`: batched, in worker processes, a progress bar,
resumable — a rerun skips what the output already holds). The bulk options are shared with `deepmetric search`
over a folder or a table (:func:`add_bulk_flags`, :func:`open_bulk`, :func:`run_bulk`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from deepmetric.cli.common import EXIT_BAD_INPUT, add_limit_flags, image_limits, load_bundle_or_exit, say

T = TypeVar("T")


def add_bulk_flags(p: argparse.ArgumentParser) -> None:
    """The options of a command that reads a folder or a table of images in bulk."""
    p.add_argument("--root", default=None,
                   help="a table's paths are relative to this folder (default: the table's own folder)")
    p.add_argument("--processes", type=int, default=1, help="worker processes (0: one per core; default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime threads per process (0: the cores shared between the processes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_limit_flags(p)


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed every image of a folder or a table with the bundle's model "
                                     "(Parquet: id, path, label, embedding)")
    p.add_argument("--bundle", required=True)
    p.add_argument("source", metavar="FOLDER|TABLE", help="a folder of images (sub-folders as labels) or a "
                   "CSV/Parquet table with a path column (label, class_name, x_1..y_2 optional)")
    p.add_argument("--out", required=True, help="the Parquet file to write (a rerun skips what it holds)")
    add_bulk_flags(p)
    p.set_defaults(handler=embed, hard_exit=True)


def open_bulk(args: argparse.Namespace, source: str) -> tuple[Any, Any, Any, dict[str, Any]] | None:
    """``(bundle, items, root, options of embed_items)`` of a bulk command's flags and ``source`` (a folder or a
    table), or None after saying what is wrong (a refused bundle ends the command with EXIT_BAD_BUNDLE)."""
    from deepmetric.data.readers import DatasetLayoutError, read_items

    for flag in ("processes", "threads"):
        if getattr(args, flag) < 0:
            say(f"--{flag} must be >= 0, got {getattr(args, flag)}")
            return None
    if args.batch_size < 1:
        say(f"--batch-size must be >= 1, got {args.batch_size}")
        return None
    limits = image_limits(args)
    if limits is None:
        return None
    bundle = load_bundle_or_exit(args.bundle)
    try:
        items, root = read_items(source, args.root)
    except DatasetLayoutError as e:
        say(str(e))
        return None
    options = {"batch_size": args.batch_size, "processes": args.processes, "threads": args.threads,
               "limits": limits, "progress": False if args.no_progress else None}
    return bundle, items, root, options


def run_bulk(work: Callable[[], T], done: str) -> T | None:
    """``work()``, or None after naming the image or the setting it stopped at (what was ``done`` is kept)."""
    from deepmetric.data.images import ImageDecodeError

    try:
        return work()
    except ImageDecodeError as e:
        say(f"{e} (the {done} so far are kept: remove or fix the file and rerun to go on)")
    except ValueError as e:
        say(str(e))
    return None


def embed(args: argparse.Namespace) -> int:
    from deepmetric.bundle.search import model_bytes
    from deepmetric.index.bulk import embed_items

    opened = open_bulk(args, args.source)
    if opened is None:
        return EXIT_BAD_INPUT
    bundle, items, root, options = opened
    table = run_bulk(lambda: embed_items(model_bytes(bundle), items, root, args.out, **options), "images embedded")
    if table is None:
        return EXIT_BAD_INPUT
    say(f"{len(table)} embeddings of dimension {bundle.dim} in {args.out}")
    return 0
