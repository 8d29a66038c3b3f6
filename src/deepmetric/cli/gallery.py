"""`deepmetric gallery add|remove`: a new bundle version with images added to its gallery (a new segment) or items
removed (tombstones) (:func:`deepmetric.bundle.gallery.update_gallery`), without retraining; `deepmetric gallery
compact`: the segments and tombstones folded into one base index (:func:`deepmetric.bundle.gallery.compact_gallery`);
`deepmetric gallery export`: the bundle's live gallery into a Milvus collection, which `add|remove --store` then
change in place (:mod:`deepmetric.store`).

    deepmetric gallery add     --bundle DIR [--out DIR [--replace]] [--allow-duplicates] [COMPACTION]
                               --label N [--class-name NAME] IMAGE...   (or --list FILE.csv)
    deepmetric gallery remove  --bundle DIR [--out DIR [--replace]] [COMPACTION] --id N [--id N ...]
    deepmetric gallery compact --bundle DIR [--out DIR [--replace]]
    deepmetric gallery export  --bundle DIR --to URI [--collection NAME] [--replace]
    deepmetric gallery add|remove --bundle DIR --store URI [--collection NAME] …   (upserts / deletes in Milvus)

COMPACTION: ``--compact-share F`` (default 0.2) and ``--max-segments N`` (default 16): an update compacts by itself
when its segments' items and tombstones exceed F × the live gallery or it would hold more than N segments;
``--no-compact`` never.

URI: a milvus-lite folder ``x.db`` or ``http://host:19530`` (token in $DEEPMETRIC_MILVUS_TOKEN). Store exit
statuses: 2 a collection of another bundle, 3 bad input (an existing collection without --replace, unknown or
already removed ids), 5 Milvus unreachable.

Without --out the bundle is updated in place (a symlink such as releases/current is repointed at a new folder
beside its target). ``--out`` must not exist, or be a bundle folder and --replace given: anything else there is
refused and left as it is (exit 3).
"""

from __future__ import annotations

import argparse
import json

from deepmetric.cli.common import EXIT_BAD_BUNDLE, EXIT_BAD_INPUT, add_limit_flags, image_limits, say


def register(sub) -> None:
    gallery = sub.add_parser("gallery", help="add images to a bundle's gallery, remove items or compact it (a new "
                             "bundle version), or export it to Milvus")
    gallery.set_defaults(handler=run, hard_exit=True)
    gsub = gallery.add_subparsers(dest="gallery_command", required=True)
    add = gsub.add_parser("add", help="embed images with the bundle's model and add them to its gallery")
    _destination_flags(add)
    add.add_argument("--allow-duplicates", action="store_true",
                     help="add images that are the same picture as a gallery item or as another IMAGE (refused "
                          "otherwise)")
    add.add_argument("images", nargs="*", metavar="IMAGE")
    add.add_argument("--label", type=int, default=None, help="label of the IMAGEs")
    add.add_argument("--class-name", default=None, help="class name of the IMAGEs (default: the label's, if known)")
    add.add_argument("--list", default=None, metavar="CSV",
                     help="a CSV with columns path,label[,class_name] (paths relative to the CSV's folder)")
    add_limit_flags(add)
    rm = gsub.add_parser("remove", help="take items out of a bundle's gallery (by id)")
    _destination_flags(rm)
    rm.add_argument("--id", type=int, action="append", required=True, dest="ids", help="an id to remove (repeat)")
    export = gsub.add_parser("export", help="write the bundle's gallery into a Milvus collection (for serve --store)")
    export.add_argument("--bundle", required=True)
    export.add_argument("--to", required=True, metavar="URI", help="milvus-lite folder x.db or http://host:19530")
    _collection_flag(export)
    export.add_argument("--replace", action="store_true", help="replace an existing collection of that name "
                        "(switched atomically once the new one is complete)")
    compact = gsub.add_parser("compact", help="fold the gallery's segments and removed items into one base index")
    _destination_flags(compact)
    for p in (add, rm):
        _compaction_flags(p)
        p.add_argument("--store", default=None, metavar="URI",
                       help="change the Milvus collection written by `gallery export` instead of the bundle")
        _collection_flag(p)


def _collection_flag(p) -> None:
    from deepmetric.store.milvus import DEFAULT_COLLECTION

    p.add_argument("--collection", default=DEFAULT_COLLECTION, help=f"collection name (default {DEFAULT_COLLECTION})")


def _compaction_flags(p) -> None:
    from deepmetric.bundle.gallery import CompactionPolicy

    default = CompactionPolicy()
    p.add_argument("--compact-share", type=float, default=default.share, metavar="F",
                   help="compact when segments + removed items exceed F x the live gallery "
                        f"(default {default.share})")
    p.add_argument("--max-segments", type=int, default=default.max_segments, metavar="N",
                   help=f"compact when the gallery would hold more than N segments (default {default.max_segments})")
    p.add_argument("--no-compact", action="store_true", help="never compact in this update")


def _destination_flags(p) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", default=None,
                   help="where the new version goes: a path that does not exist (default: update --bundle in place; "
                        "a symlink is repointed at a new folder beside its target)")
    p.add_argument("--replace", action="store_true", help="--out may be an existing bundle folder, which is replaced")


def _items(args: argparse.Namespace) -> list | None:
    """The images to add (IMAGE... with --label, and the rows of --list), or None after saying what is wrong."""
    import csv
    from pathlib import Path

    from deepmetric.bundle.gallery import NewItem

    items: list[NewItem] = []
    if args.images:
        if args.label is None:
            say("gallery add IMAGE... needs --label")
            return None
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
                        say(f"{args.list}:{n}: needs columns path,label[,class_name] with an integer label, "
                            f"got {row}")
                        return None
        except OSError as e:
            say(f"cannot read {args.list}: {e.strerror or e}")
            return None
    return items


def run(args: argparse.Namespace) -> int:
    from deepmetric.bundle.gallery import CompactionPolicy, GalleryError, compact_gallery, update_gallery

    if args.gallery_command == "export" or getattr(args, "store", None):
        return _run_store(args)
    if args.gallery_command == "compact":
        return _new_version(compact_gallery, args.bundle, args.out, replace=args.replace)
    try:
        policy = None if args.no_compact else CompactionPolicy(args.compact_share, args.max_segments)
    except GalleryError as e:
        say(f"gallery not changed: {e}")
        return EXIT_BAD_INPUT
    if args.gallery_command == "add":
        items = _items(args)
        if items is None:
            return EXIT_BAD_INPUT
        limits = image_limits(args)
        if limits is None:
            return EXIT_BAD_INPUT
        change: dict = {"add": items, "limits": limits, "allow_duplicates": args.allow_duplicates}
    else:
        change = {"remove": args.ids}
    return _new_version(update_gallery, args.bundle, args.out, replace=args.replace, compaction=policy, **change)


def _new_version(make, *args, **kwargs) -> int:
    """Write a new bundle version with ``make`` (update_gallery / compact_gallery); say what happened."""
    from deepmetric.bundle import BundleError
    from deepmetric.bundle.gallery import GalleryError, describe

    try:
        summary = make(*args, **kwargs)
    except BundleError as e:
        say(str(e))
        return EXIT_BAD_BUNDLE
    except GalleryError as e:
        say(f"gallery not changed: {e}")
        return EXIT_BAD_INPUT
    if summary["duplicates"]:
        dups = summary["duplicates"]
        say(f"added {len(dups)} duplicate image(s) (--allow-duplicates): {describe(dups)}")
    if summary["folder"] != summary["bundle"]:
        say(f"new version written to {summary['folder']}; {summary['bundle']} now points at it")
    print(json.dumps(summary, indent=2))
    return 0


def _run_store(args: argparse.Namespace) -> int:
    """`gallery export`, and `gallery add|remove --store`: the collection changes, the bundle does not."""
    from deepmetric.cli.common import load_bundle_or_exit
    from deepmetric.store.milvus import GalleryStore, StoreError, export_gallery

    if getattr(args, "out", None):
        say("--out writes a bundle; with --store the collection is changed instead: give one of them")
        return EXIT_BAD_INPUT
    items = None
    if args.gallery_command == "add":
        items = _items(args)
        limits = image_limits(args)
        if items is None or limits is None:
            return EXIT_BAD_INPUT
        if not items:
            say("gallery add: no images given (IMAGE... with --label, or --list)")
            return EXIT_BAD_INPUT
    bundle = load_bundle_or_exit(args.bundle)
    store = None
    try:
        if args.gallery_command == "export":
            summary = export_gallery(bundle, args.to, args.collection, replace=args.replace)
        else:
            store = GalleryStore(args.store, args.collection)
            store.check(bundle.manifest)
            if args.gallery_command == "remove":
                summary = {"removed": store.remove(args.ids)}
            else:
                summary = {"added": _add_to_store(store, bundle, items, limits)}
            summary = {"uri": args.store, "collection": args.collection, **summary, "items": store.count()}
    except StoreError as e:
        say(str(e))
        return e.exit_code
    except _NotAdded as e:
        say(f"gallery not changed: {e}")
        return EXIT_BAD_INPUT
    finally:
        if store is not None:
            store.close()
    print(json.dumps(summary, indent=2))
    return 0


class _NotAdded(Exception):
    pass


def _add_to_store(store, bundle, items: list, limits) -> list[int]:
    """Embed ``items`` with the bundle's model (the evaluation transform, as every other path) and upsert them."""
    from deepmetric.bundle.gallery import GalleryError, embed_items

    try:
        vectors = embed_items(bundle, items, limits)
    except GalleryError as e:
        raise _NotAdded(str(e)) from None
    names = bundle.ids.drop_duplicates("label").set_index("label")["class_name"].astype(str)
    class_names = [it.class_name or names.get(it.label, str(it.label)) for it in items]
    return store.add([it.label for it in items], class_names, [it.path or it.file for it in items], vectors)
