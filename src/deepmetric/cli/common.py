"""What every command group shares: the exit statuses, the parser class, the image-limit flags, bundle loading.

Exit statuses: 0 done; 2 a bundle refused (checksums, dimensions, lineage); 3 bad input (usage, flags, images,
files). The release commands add their own (`deepmetric.release.record.EXIT`: 4 unknown release, 5 unreachable,
6 publish refused). Messages go to stderr as ``deepmetric: <message>``, results to stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_BAD_BUNDLE = 2
EXIT_BAD_INPUT = 3

__all__ = ["EXIT_BAD_BUNDLE", "EXIT_BAD_INPUT", "Parser", "add_limit_flags", "image_limits", "load_bundle_or_exit",
           "say"]


class Parser(argparse.ArgumentParser):
    """Usage errors exit with EXIT_BAD_INPUT, so that exit status 2 always means "bundle refused"."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def say(message: str) -> None:
    """A message for the user, on stderr."""
    print(f"deepmetric: {message}", file=sys.stderr, flush=True)


def add_limit_flags(p: argparse.ArgumentParser) -> None:
    """``--max-pixels`` / ``--max-aspect-ratio``: the per-image limits of every command that reads images
    (:func:`image_limits` turns them into one ``ImageLimits``; a flag not given keeps its default)."""
    from deepmetric.data.images import ImageLimits

    d = ImageLimits()
    p.add_argument("--max-pixels", type=int, default=None,
                   help=f"per-image pixel limit (decompression bombs; default {d.max_pixels:,})")
    p.add_argument("--max-aspect-ratio", type=float, default=None,
                   help=f"longer/shorter side limit (thin images; default {d.max_aspect_ratio:g})")


def image_limits(args: argparse.Namespace) -> Any:
    """The ``ImageLimits`` of ``--max-pixels`` / ``--max-aspect-ratio``, or None after saying why they are
    invalid."""
    from deepmetric.data.images import ImageLimits

    given = {k: v for k, v in (("max_pixels", args.max_pixels), ("max_aspect_ratio", args.max_aspect_ratio))
             if v is not None}
    try:
        return ImageLimits(**given)
    except ValueError as e:
        say(f"invalid setting: {e}")
        return None


def load_bundle_or_exit(root: str, threads: int = 0) -> Any:
    """The verified bundle at ``root``; a refused one ends the command with its reason and EXIT_BAD_BUNDLE."""
    from deepmetric.bundle import BundleError, load_bundle

    try:
        return load_bundle(root, threads=threads)
    except BundleError as e:
        say(str(e))
        raise SystemExit(EXIT_BAD_BUNDLE) from None
