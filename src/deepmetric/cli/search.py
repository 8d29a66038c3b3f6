"""`deepmetric search --bundle DIR IMAGE... [-k 10] [--fmr 0.01]` (nearest gallery items of local images, as JSON,
each marked ``match`` at the operating point when the bundle has thresholds: as `/v1/search` answers), `deepmetric
search --bundle DIR <folder|table> --out results.csv [--html]` (every image of a folder or a table, in bulk:
`deepmetric.bundle.search`) and `deepmetric info --bundle DIR` (the bundle's manifest, after verifying it)."""

from __future__ import annotations

import argparse
import json

from pathlib import Path

from deepmetric.cli.common import EXIT_BAD_INPUT, image_limits, load_bundle_or_exit, say
from deepmetric.cli.embed import add_bulk_flags, open_bulk, run_bulk


def register(sub) -> None:
    p = sub.add_parser("search", help="nearest gallery items of local images (JSON), or of every image of a folder "
                                      "or a table (--out results.csv)")
    p.add_argument("--bundle", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files; or, with --out, one folder or table")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--fmr", type=float, default=None,
                   help="operating point (false-match rate) deciding each neighbour's `match`; one of the bundle's "
                        "(default: its default_fmr; `deepmetric info` lists them under thresholds.json)")
    p.add_argument("--rerank", default="none",
                   help="qe: order the neighbours by alpha-query expansion, as /v1/search?rerank=qe (default: none)")
    p.add_argument("--out", default=None, help="search every image of a folder or a table; write this CSV (a "
                                               "rerun skips the queries it holds)")
    p.add_argument("--html", nargs="?", const="", default=None, metavar="PAGE",
                   help="with --out: also an HTML page of the results with thumbnails (default: beside the CSV)")
    p.add_argument("--html-max", type=int, default=500, help="queries shown on the HTML page (default 500)")
    add_bulk_flags(p)
    p.set_defaults(handler=search, hard_exit=True)

    p = sub.add_parser("info", help="print the bundle's manifest (after verifying it)")
    p.add_argument("--bundle", required=True)
    p.set_defaults(handler=info, hard_exit=True)


def search(args: argparse.Namespace) -> int:
    import numpy as np

    from deepmetric.bundle.reader import RERANKINGS
    from deepmetric.data.images import ImageDecodeError
    from deepmetric.data.transforms import load_eval_image

    if args.out is not None or args.html is not None:
        return search_bulk(args)
    folders = [p for p in args.images if Path(p).is_dir()]
    if folders:
        say(f"{folders[0]} is a folder: search a folder or a table with --out results.csv")
        return EXIT_BAD_INPUT
    limits = image_limits(args)
    if limits is None:
        return EXIT_BAD_INPUT
    if args.rerank not in ("none", *RERANKINGS):
        say(f"--rerank must be one of {['none', *RERANKINGS]}, got {args.rerank!r}")
        return EXIT_BAD_INPUT
    bundle = load_bundle_or_exit(args.bundle)
    if not 1 <= args.k <= bundle.gallery_size:
        say(f"-k must be in [1, {bundle.gallery_size}] (the gallery size), got {args.k}")
        return EXIT_BAD_INPUT
    try:
        point = bundle.operating_point(args.fmr)
    except ValueError as e:
        say(f"--fmr: {e}")
        return EXIT_BAD_INPUT
    arrays = []
    for path in args.images:
        try:
            arrays.append(load_eval_image(path, bundle.spec, limits=limits))
        except ImageDecodeError as e:
            say(str(e))
            return EXIT_BAD_INPUT
    rerank = None if args.rerank == "none" else args.rerank
    hits = bundle.search(bundle.embed(np.stack(arrays)), args.k, rerank)
    payload = bundle.search_payload(list(args.images), hits, args.k, point)
    print(json.dumps({**payload, "rerank": rerank} if rerank else payload, indent=2))
    return 0


def search_bulk(args: argparse.Namespace) -> int:
    from deepmetric.bundle.search import results_page, search_items
    from deepmetric.io.atomic import atomic_path

    if args.out is None:
        say("--html needs --out results.csv")
        return EXIT_BAD_INPUT
    if len(args.images) != 1:
        say(f"with --out, give one folder or table to search, got {len(args.images)} arguments")
        return EXIT_BAD_INPUT
    if args.fmr is not None or args.rerank != "none":
        say("--fmr and --rerank apply to a search of image files; a search with --out ranks by score alone")
        return EXIT_BAD_INPUT
    opened = open_bulk(args, args.images[0])
    if opened is None:
        return EXIT_BAD_INPUT
    bundle, items, root, options = opened
    results = run_bulk(lambda: search_items(bundle, items, root, args.out, k=args.k, **options), "queries embedded")
    if results is None:
        return EXIT_BAD_INPUT
    say(f"{results['query'].nunique()} queries x {args.k} neighbours in {args.out}")
    if args.html is not None:
        page = Path(args.html) if args.html else Path(args.out).with_suffix(".html")
        with atomic_path(page) as tmp:
            Path(tmp).write_text(results_page(bundle, results, items, root, limits=options["limits"],
                                              max_queries=args.html_max), encoding="utf-8")
        say(f"results page: {page}")
    return 0


def info(args: argparse.Namespace) -> int:
    bundle = load_bundle_or_exit(args.bundle)
    print(json.dumps(bundle.manifest, indent=2, sort_keys=True))
    return 0
