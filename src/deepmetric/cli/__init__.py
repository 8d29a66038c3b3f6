"""`deepmetric`: the product's command line, one module per command group.

    deepmetric serve   --bundle DIR [--host 127.0.0.1] [--port 8000] [--workers N] [--no-batching]   (cli/serve.py)
    deepmetric search  --bundle DIR IMAGE... [-k 10]  |  deepmetric info --bundle DIR            (cli/search.py)
    deepmetric search  --bundle DIR <folder|table> --out results.csv [--html]                   (cli/search.py)
    deepmetric embed   --bundle DIR <folder|table> --out embeddings.parquet                     (cli/embed.py)
    deepmetric gallery add|remove|compact|export --bundle DIR …                                 (cli/gallery.py)
    deepmetric publish NAME  |  pull NAME --repo URL  |  releases --repo URL                     (cli/release.py)
    deepmetric viz [--port 4141] [--build-only]                                                  (cli/viz.py)

A group module has ``register(subparsers)``, which adds its commands and sets each one's ``handler`` (``args ->
exit status``); :data:`GROUPS` below is the one place groups are registered, so a new group is one module plus
one line there. Shared pieces (exit statuses, the parser class, the image-limit flags, bundle loading) are in
:mod:`deepmetric.cli.common`. Group modules import their heavy dependencies inside the handlers: building the
parser stays cheap, and the serving commands import neither torch nor Kedro.

This is also the module Kedro imports for project-specific `kedro` commands (``<package_name>.cli``, here
``deepmetric.cli``): Kedro requires its ``cli`` click group, and the project adds no `kedro` command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from deepmetric.cli import embed, gallery, release, search, serve, viz
from deepmetric.cli.common import Parser

#: The command groups, in the order `deepmetric --help` lists their commands.
GROUPS = (serve, search, embed, gallery, release, viz)

__all__ = ["GROUPS", "build_parser", "cli", "main"]


@click.group(name="deepmetric")
def cli() -> None:
    """Project-specific `kedro` commands: none (Kedro loads this group from ``<package_name>.cli``)."""


def build_parser() -> Parser:
    parser = Parser(prog="deepmetric", description="Serve and query a deepmetric deploy bundle.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Called as a program (``argv`` None), the commands whose parser sets ``hard_exit`` (info,
    search, gallery, publish, pull) end with ``os._exit`` after flushing: onnxruntime's and faiss's native thread
    pools occasionally abort ("terminate called without an active exception") while the interpreter tears them
    down, which would turn a finished command into exit 134."""
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except BrokenPipeError:  # output piped into `head` and the like
        code = 0
        if argv is None:
            os._exit(0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if argv is not None:
            raise
    if argv is None and getattr(args, "hard_exit", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
