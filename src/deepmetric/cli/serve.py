"""`deepmetric serve --bundle DIR [--host 127.0.0.1] [--port 8000] [--workers N] [--no-batching] …`: the HTTP
service over a bundle (FastAPI on uvicorn; :mod:`deepmetric.serving`).

The bundle is verified before the port is bound (in this process for one worker, which then serves this copy; in a
child process for several, so that the supervisor holds no copy of the model): a refused bundle exits 2 with the
file and the reason, a bad flag or a port that cannot be bound exits 3.

``--store URI [--collection NAME]``: the gallery is searched in a Milvus collection written by `deepmetric gallery
export` (:mod:`deepmetric.store.milvus`) instead of the bundle's index; the model still comes from the bundle. The
collection is checked before the port is bound: one exported from another bundle (manifest, dimension) exits 2, an
unreachable URI 5.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from deepmetric.cli.common import (EXIT_BAD_BUNDLE, EXIT_BAD_INPUT, add_limit_flags, image_limits,
                                   load_bundle_or_exit, say)


def register(sub) -> None:
    from deepmetric.serving.config import ServerSettings

    d = ServerSettings()
    p = sub.add_parser("serve", help="HTTP service over a bundle (FastAPI on uvicorn)")
    p.add_argument("--bundle", required=True, help="bundle folder (data/09_deploy/bundle)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes, each loads the bundle once")
    p.add_argument("--log-level", default="info")
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes, help="request body limit")
    add_limit_flags(p)
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per request")
    p.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s,
                   help="longest wait for a request body's next bytes; a client that sends nothing for that long "
                        "gets 408 body_timeout and is disconnected")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="onnxruntime intra-op threads per worker (0: onnxruntime's default, every core)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=d.batching,
                   help="dynamic batching: concurrent requests' images run as one onnxruntime batch")
    p.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms,
                   help="how long a batch waits for requests still being decoded")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images per onnxruntime batch")
    p.add_argument("--prep-threads", type=int, default=d.prep_threads,
                   help="decode threads per worker (0: the cores divided among the workers)")
    p.add_argument("--store", default=None, metavar="URI",
                   help="search the gallery in this Milvus collection (written by `deepmetric gallery export`) "
                        "instead of the bundle's index: a milvus-lite folder x.db or http://host:19530")
    p.add_argument("--collection", default=None, help="the --store collection (default deepmetric_gallery)")
    p.add_argument("--admin-token-file", default=None,
                   help="file holding the token that enables POST /v1/admin/reload (or $DEEPMETRIC_ADMIN_TOKEN)")
    p.set_defaults(handler=serve)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 65535], got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535] (0: any free port), got {port}")
    return port


def _admin_token(path: str | None) -> str | None:
    """The admin token (``--admin-token-file``, else $DEEPMETRIC_ADMIN_TOKEN, else None); raises ValueError with
    the message when the file cannot be read or the token is too short."""
    from deepmetric.serving.config import ADMIN_TOKEN_ENV

    token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ValueError(f"cannot read --admin-token-file {path}: {e.strerror or e}") from None
        if len(token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
    return token


def _open_store(args: argparse.Namespace, bundle) -> tuple:
    """(the gallery store of ``--store``, checked against the bundle, or None; the exit status when refused).
    With several workers (``bundle`` None, verified in a child) the check reads the bundle's manifest, and each
    worker opens its own client."""
    from deepmetric.bundle import read_manifest
    from deepmetric.store.milvus import DEFAULT_COLLECTION, GalleryStore, StoreError

    if args.workers > 1 and args.store.endswith(".db"):
        say("a milvus-lite folder (.db) is opened by one process at a time: serve it with --workers 1, or run it as "
            "a server (`milvus-lite server --data-dir ...`) and give its http:// URI")
        return None, EXIT_BAD_INPUT
    store = None
    try:
        store = GalleryStore(args.store, args.collection or DEFAULT_COLLECTION)
        info = store.check(bundle.manifest if bundle is not None else read_manifest(args.bundle))
    except StoreError as e:
        if store is not None:
            store.close()
        say(str(e))
        return None, e.exit_code
    say(f"gallery store {args.store}, collection {store.collection}: {info['items']} items, dim {info['dim']}, "
        f"index {info.get('index')}")
    if bundle is None:
        store.close()  # each worker opens its own
    return store, 0


def serve(args: argparse.Namespace) -> int:
    from deepmetric.serving.config import (ADMIN_TOKEN_ENV, BUNDLE_ENV, BUNDLE_SOURCE_ENV, STORE_COLLECTION_ENV,
                                           STORE_ENV, SUPERVISED_ENV, ServerSettings)
    from deepmetric.serving.http import bind_tcp_socket
    from deepmetric.serving.runner import describe, serve_single, serve_workers, verify_in_child

    if args.workers < 1:
        say("--workers must be >= 1")
        return EXIT_BAD_INPUT
    limits = image_limits(args)
    if limits is None:
        return EXIT_BAD_INPUT
    from deepmetric.runtime import threads_per_worker

    share = threads_per_worker(args.workers)  # the cores this process may use, divided among the workers
    try:
        settings = ServerSettings(max_upload_bytes=args.max_upload_bytes, max_pixels=limits.max_pixels,
                                  max_aspect_ratio=limits.max_aspect_ratio, max_images=args.max_images,
                                  body_timeout_s=args.body_timeout_s,
                                  threads=args.threads,
                                  batching=args.batching, batch_window_ms=args.batch_window_ms,
                                  max_batch=args.max_batch, prep_threads=args.prep_threads or share)
    except ValueError as e:
        say(f"invalid setting: {e}")
        return EXIT_BAD_INPUT
    try:
        admin_token = _admin_token(args.admin_token_file)
    except ValueError as e:
        say(str(e))
        return EXIT_BAD_INPUT
    # Verify before binding the port: in this process for one worker (it serves this copy), else in a child.
    if args.workers == 1:
        bundle = load_bundle_or_exit(args.bundle, settings.threads)
        info = describe(bundle)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            info = pool.submit(verify_in_child, args.bundle, settings.threads).result()
        if "error" in info:
            say(info["error"])
            return EXIT_BAD_BUNDLE
    say(f"bundle {os.path.abspath(args.bundle)} verified: model {info['model_version']}, index "
        f"{info['index_version']} ({info['index_factory']}, {info['gallery_size']} items, dim {info['dim']})")
    store = None
    if args.store:
        store, code = _open_store(args, bundle if args.workers == 1 else None)
        if store is None:
            return code
    try:
        sock = bind_tcp_socket(args.host, args.port)
    except OSError as e:
        say(str(e.strerror or e))
        return EXIT_BAD_INPUT
    say(f"listening on http://{args.host}:{sock.getsockname()[1]} ({args.workers} worker"
        f"{'s' if args.workers > 1 else ''})")
    if args.workers == 1:
        from deepmetric.serving.app import create_app

        serve_single(create_app(bundle, settings, root=os.path.abspath(args.bundle), admin_token=admin_token,
                                store=store), sock, args.log_level)
    else:
        # Workers load the resolved folder (a `pull` that swaps releases/current must not change what a respawned
        # worker loads); a reload reads the path as given: on SIGHUP the supervisor verifies it, records its
        # resolved folder for later respawns, then has every worker reload.
        env = {BUNDLE_ENV: os.path.realpath(args.bundle), BUNDLE_SOURCE_ENV: os.path.abspath(args.bundle),
               SUPERVISED_ENV: "1", **settings.to_env()}
        if admin_token:
            env[ADMIN_TOKEN_ENV] = admin_token
        if args.store:
            env.update({STORE_ENV: args.store, STORE_COLLECTION_ENV: store.collection})
        serve_workers(sock, args.workers, env, args.log_level)
    return 0
