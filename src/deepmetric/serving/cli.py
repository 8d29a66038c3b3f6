"""`deepmetric` command line: serve a bundle over HTTP, search it locally, print its manifest.

    deepmetric serve  --bundle DIR [--host 127.0.0.1] [--port 8000] [--workers N] [--no-batching]
    deepmetric search --bundle DIR IMAGE... [-k 10]
    deepmetric info   --bundle DIR
    deepmetric publish NAME | pull NAME --repo URL | releases --repo URL   (releases: deepmetric.release.cli)
    deepmetric gallery add    --bundle DIR [--out DIR] --label N [--class-name NAME] IMAGE...   (or --list FILE.csv)
    deepmetric gallery remove --bundle DIR [--out DIR] --id N [--id N ...]

A bundle that fails verification (checksums, dimensions) is refused with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

EXIT_BAD_BUNDLE = 2
EXIT_BAD_INPUT = 3


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with EXIT_BAD_INPUT, so that exit status 2 always means "bundle refused"."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 65535], got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535] (0: any free port), got {port}")
    return port


def _settings_args(p: argparse.ArgumentParser) -> None:
    from deepmetric.serving.config import ServerSettings

    d = ServerSettings()
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes, help="request body limit")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per-image pixel limit (bombs)")
    p.add_argument("--max-aspect-ratio", type=float, default=d.max_aspect_ratio,
                   help="longer/shorter side limit (thin images)")
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per request")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="onnxruntime intra-op threads per worker (0: onnxruntime's default, every core)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=d.batching,
                   help="dynamic batching: concurrent requests' images run as one onnxruntime batch")
    p.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help="how long a batch waits for requests still being decoded")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images per onnxruntime batch")
    p.add_argument("--prep-threads", type=int, default=d.prep_threads,
                   help="decode threads per worker (0: the cores divided among the workers)")
    p.add_argument("--admin-token-file", default=None,
                   help="file holding the token that enables POST /v1/admin/reload (or $DEEPMETRIC_ADMIN_TOKEN)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deepmetric", description="Serve and query a deepmetric deploy bundle.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="HTTP service over a bundle (FastAPI on uvicorn)")
    serve.add_argument("--bundle", required=True, help="bundle folder (data/09_deploy/bundle)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes, each loads the bundle once")
    serve.add_argument("--log-level", default="info")
    _settings_args(serve)

    search = sub.add_parser("search", help="nearest gallery items of local images, as JSON")
    search.add_argument("--bundle", required=True)
    search.add_argument("images", nargs="+", metavar="IMAGE")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--max-pixels", type=int, default=None, help="per-image pixel limit (bombs)")
    search.add_argument("--max-aspect-ratio", type=float, default=None, help="longer/shorter side limit")

    info = sub.add_parser("info", help="print the bundle's manifest (after verifying it)")
    info.add_argument("--bundle", required=True)

    gallery = sub.add_parser("gallery", help="add images to a bundle's gallery or remove items: a new bundle version")
    gsub = gallery.add_subparsers(dest="gallery_command", required=True)
    add = gsub.add_parser("add", help="embed images with the bundle's model and add them to its gallery")
    add.add_argument("--bundle", required=True)
    add.add_argument("--out", default=None, help="where the new version goes (default: replace --bundle atomically)")
    add.add_argument("images", nargs="*", metavar="IMAGE")
    add.add_argument("--label", type=int, default=None, help="label of the IMAGEs")
    add.add_argument("--class-name", default=None, help="class name of the IMAGEs (default: the label's, if known)")
    add.add_argument("--list", default=None, metavar="CSV",
                     help="a CSV with columns path,label[,class_name] (paths relative to the CSV's folder)")
    add.add_argument("--max-pixels", type=int, default=None, help="per-image pixel limit (bombs)")
    add.add_argument("--max-aspect-ratio", type=float, default=None, help="longer/shorter side limit")
    rm = gsub.add_parser("remove", help="take items out of a bundle's gallery (by id)")
    rm.add_argument("--bundle", required=True)
    rm.add_argument("--out", default=None, help="where the new version goes (default: replace --bundle atomically)")
    rm.add_argument("--id", type=int, action="append", required=True, dest="ids", help="an id to remove (repeat)")

    from deepmetric.release.cli import add_parsers

    add_parsers(sub)
    return parser


def _load(root: str, threads: int = 0):
    from deepmetric.bundle import BundleError, load_bundle

    try:
        return load_bundle(root, threads=threads)
    except BundleError as e:
        print(f"deepmetric: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_BUNDLE) from None


def verify_in_child(root: str, threads: int) -> dict:
    """Load and verify a bundle; its summary, or ``{"error": message}`` (run in a child process by `serve
    --workers N`, so that the supervisor does not keep a copy of the model and index)."""
    from deepmetric.bundle import BundleError, load_bundle

    try:
        return _summary(load_bundle(root, threads=threads))
    except BundleError as e:
        return {"error": str(e)}


def _summary(b) -> dict:
    return {"model_version": b.manifest["model_version"], "index_version": b.manifest["index_version"],
            "index_factory": b.manifest.get("index_factory"), "gallery_size": b.gallery_size, "dim": b.dim}


def _serve(args: argparse.Namespace) -> int:
    from deepmetric.serving.config import ADMIN_TOKEN_ENV, BUNDLE_ENV, BUNDLE_SOURCE_ENV, SUPERVISED_ENV, ServerSettings
    from deepmetric.serving.http import bind_tcp_socket
    from deepmetric.serving.runner import serve_single, serve_workers

    if args.workers < 1:
        print("deepmetric: --workers must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    cores = os.cpu_count() or 1
    share = max(1, cores // args.workers)  # the cores, divided among the workers
    try:
        settings = ServerSettings(max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                                  max_aspect_ratio=args.max_aspect_ratio, max_images=args.max_images,
                                  threads=args.threads,
                                  batching=args.batching, batch_window_ms=args.batch_window_ms,
                                  max_batch=args.max_batch, prep_threads=args.prep_threads or share)
    except ValueError as e:
        print(f"deepmetric: invalid setting: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if args.admin_token_file:
        try:
            admin_token = open(args.admin_token_file, encoding="utf-8").read().strip()
        except OSError as e:
            print(f"deepmetric: cannot read --admin-token-file {args.admin_token_file}: {e.strerror or e}",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        if len(admin_token) < 16:
            print("deepmetric: the admin token must be at least 16 characters", file=sys.stderr)
            return EXIT_BAD_INPUT
    # Verify before binding the port: in this process for one worker (it serves this copy), else in a child.
    if args.workers == 1:
        bundle = _load(args.bundle, settings.threads)
        info = _summary(bundle)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            info = pool.submit(verify_in_child, args.bundle, settings.threads).result()
        if "error" in info:
            print(f"deepmetric: {info['error']}", file=sys.stderr)
            return EXIT_BAD_BUNDLE
    print(f"deepmetric: bundle {os.path.abspath(args.bundle)} verified: model {info['model_version']}, "
          f"index {info['index_version']} ({info['index_factory']}, {info['gallery_size']} items, dim {info['dim']})",
          file=sys.stderr, flush=True)
    try:
        sock = bind_tcp_socket(args.host, args.port)
    except OSError as e:
        print(f"deepmetric: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"deepmetric: listening on http://{args.host}:{sock.getsockname()[1]} ({args.workers} worker"
          f"{'s' if args.workers > 1 else ''})", file=sys.stderr, flush=True)
    if args.workers == 1:
        from deepmetric.serving.app import create_app

        serve_single(create_app(bundle, settings, root=os.path.abspath(args.bundle), admin_token=admin_token), sock,
                     args.log_level)
    else:
        # Workers load the resolved folder (a `pull` that swaps releases/current must not change what a respawned
        # worker loads); a reload reads the path as given: on SIGHUP the supervisor verifies it, records its
        # resolved folder for later respawns, then has every worker reload.
        env = {BUNDLE_ENV: os.path.realpath(args.bundle), BUNDLE_SOURCE_ENV: os.path.abspath(args.bundle),
               SUPERVISED_ENV: "1", **settings.to_env()}
        if admin_token:
            env[ADMIN_TOKEN_ENV] = admin_token
        serve_workers(sock, args.workers, env, args.log_level)
    return 0


def _image_limits(args: argparse.Namespace):
    """The per-image limits of ``--max-pixels`` / ``--max-aspect-ratio`` (defaults where not given) as
    ServerSettings, or None after printing why they are invalid."""
    from deepmetric.serving.config import ServerSettings

    given = {k: v for k, v in (("max_pixels", args.max_pixels), ("max_aspect_ratio", args.max_aspect_ratio))
             if v is not None}
    try:
        return ServerSettings(**given)
    except ValueError as e:
        print(f"deepmetric: invalid setting: {e}", file=sys.stderr)
        return None


def _search(args: argparse.Namespace) -> int:
    import numpy as np

    from deepmetric.data.images import ImageDecodeError
    from deepmetric.data.transforms import load_eval_image

    limits = _image_limits(args)
    if limits is None:
        return EXIT_BAD_INPUT
    bundle = _load(args.bundle)
    if not 1 <= args.k <= bundle.gallery_size:
        print(f"deepmetric: -k must be in [1, {bundle.gallery_size}] (the gallery size), got {args.k}", file=sys.stderr)
        return EXIT_BAD_INPUT
    arrays = []
    for path in args.images:
        try:
            arrays.append(load_eval_image(path, bundle.spec, limits.max_pixels, limits.max_aspect_ratio))
        except ImageDecodeError as e:
            print(f"deepmetric: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    hits = bundle.search(bundle.embed(np.stack(arrays)), args.k)
    out = {
        "model_version": bundle.manifest["model_version"],
        "index_version": bundle.manifest["index_version"],
        "k": args.k,
        "results": [{"image": p, "neighbors": h} for p, h in zip(args.images, hits)],
    }
    print(json.dumps(out, indent=2))
    return 0


def _gallery(args: argparse.Namespace) -> int:
    import csv
    from pathlib import Path

    from deepmetric.bundle import BundleError
    from deepmetric.bundle.gallery import GalleryError, NewItem, update_gallery

    kw: dict = {}
    if args.gallery_command == "add":
        items: list[NewItem] = []
        if args.images:
            if args.label is None:
                print("deepmetric: gallery add IMAGE... needs --label", file=sys.stderr)
                return EXIT_BAD_INPUT
            items += [NewItem(p, args.label, args.class_name) for p in args.images]
        if args.list:
            base = Path(args.list).resolve().parent
            try:
                with open(args.list, newline="", encoding="utf-8") as f:
                    for n, row in enumerate(csv.DictReader(f), start=2):
                        try:
                            items.append(NewItem(str(base / row["path"]), int(row["label"]),
                                                 row.get("class_name") or None, row["path"]))
                        except (KeyError, TypeError, ValueError):
                            print(f"deepmetric: {args.list}:{n}: needs columns path,label[,class_name] with an "
                                  f"integer label, got {row}", file=sys.stderr)
                            return EXIT_BAD_INPUT
            except OSError as e:
                print(f"deepmetric: cannot read {args.list}: {e.strerror or e}", file=sys.stderr)
                return EXIT_BAD_INPUT
        limits = _image_limits(args)
        if limits is None:
            return EXIT_BAD_INPUT
        kw = {"add": items, "limits": limits.limits}
    else:
        kw = {"remove": args.ids}
    try:
        summary = update_gallery(args.bundle, args.out, **kw)
    except BundleError as e:
        print(f"deepmetric: {e}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    except GalleryError as e:
        print(f"deepmetric: gallery not changed: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(summary, indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    bundle = _load(args.bundle)
    print(json.dumps(bundle.manifest, indent=2, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Called as a program (``argv`` None), `info`/`search` end with ``os._exit`` after flushing:
    onnxruntime's and faiss's native thread pools occasionally abort ("terminate called without an active
    exception") while the interpreter tears them down, which would turn a finished command into exit 134."""
    args = _parser().parse_args(argv)
    from deepmetric.release.cli import HANDLERS

    handler = {"serve": _serve, "search": _search, "info": _info, "gallery": _gallery, **HANDLERS}[args.command]
    try:
        code = handler(args)
    except BrokenPipeError:  # output piped into `head` and the like
        code = 0
        if argv is None:
            os._exit(0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if argv is not None:
            raise
    if argv is None and args.command in ("info", "search", "pull", "publish", "gallery"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
