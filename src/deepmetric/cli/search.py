"""`deepmetric search --bundle DIR IMAGE... [-k 10] [--fmr 0.01]` (nearest gallery items of local images, as JSON,
each marked ``match`` at the operating point when the bundle has thresholds: as `/v1/search` answers) and
`deepmetric info --bundle DIR` (the bundle's manifest, after verifying it)."""

from __future__ import annotations

import argparse
import json

from deepmetric.cli.common import EXIT_BAD_INPUT, add_limit_flags, image_limits, load_bundle_or_exit, say


def register(sub) -> None:
    p = sub.add_parser("search", help="nearest gallery items of local images, as JSON")
    p.add_argument("--bundle", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--fmr", type=float, default=None,
                   help="operating point (false-match rate) deciding each neighbour's `match`; one of the bundle's "
                        "(default: its default_fmr; `deepmetric info` lists them under thresholds.json)")
    p.add_argument("--rerank", default="none",
                   help="qe: order the neighbours by alpha-query expansion, as /v1/search?rerank=qe (default: none)")
    add_limit_flags(p)
    p.set_defaults(handler=search, hard_exit=True)

    p = sub.add_parser("info", help="print the bundle's manifest (after verifying it)")
    p.add_argument("--bundle", required=True)
    p.set_defaults(handler=info, hard_exit=True)


def search(args: argparse.Namespace) -> int:
    import numpy as np

    from deepmetric.bundle.reader import RERANKINGS
    from deepmetric.data.images import ImageDecodeError
    from deepmetric.data.transforms import load_eval_image

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


def info(args: argparse.Namespace) -> int:
    bundle = load_bundle_or_exit(args.bundle)
    print(json.dumps(bundle.manifest, indent=2, sort_keys=True))
    return 0
