"""Generators for tiny replicas of the four benchmark layouts (same file formats, the .mat included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests import fixtures


def png_bytes(size=(24, 20), color=(200, 30, 30), mode="RGB", fmt="PNG", **kw) -> bytes:
    """A plain ``size`` image of one ``color``, encoded (tests.fixtures.png_bytes)."""
    return fixtures.png_bytes(Image.new(mode, size, color), fmt, **kw)


def write_image(path: Path, seed: int, size=(24, 20), fmt="JPEG") -> None:
    """A small image with content unique to ``seed`` (distinct bytes per file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, fmt)


def make_cub(root: Path, num_classes: int = 4, per_class: int = 3, appledouble: bool = True) -> Path:
    """CUB_200_2011/: images/NNN.Name/Name_k.jpg + images.txt, image_class_labels.txt, classes.txt,
    train_test_split.txt (which must be ignored) and AppleDouble junk."""
    images, labels, classes, tts = [], [], [], []
    image_id = 0
    for c in range(1, num_classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for k in range(per_class):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{k:04d}.jpg"
            write_image(root / "images" / rel, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            tts.append(f"{image_id} {k % 2}")
        if appledouble:
            (root / "images" / folder / f"._Bird_{c}_0000.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    if appledouble:  # a listed AppleDouble entry (seen in some copies) is skipped too
        images.append(f"{image_id + 1} {classes[0].split()[1]}/._Bird_1_0000.jpg")
        labels.append(f"{image_id + 1} 1")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(tts) + "\n")
    if appledouble:
        (root / "._images.txt").write_bytes(b"junk")
    return root


def _struct(rows: list[dict]) -> np.ndarray:
    fields = list(rows[0])
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, r in enumerate(rows):
        for f in fields:
            arr[0, i][f] = r[f]
    return arr


def make_cars(root: Path, num_classes: int = 4, per_class: int = 3, devkit: bool = False) -> Path:
    """Cars196: car_ims/ + cars_annos.mat, or the devkit variant (cars_train/, cars_test/, devkit/...)."""
    from scipy.io import savemat

    names = np.array([f"Make Model {c} 2012" for c in range(1, num_classes + 1)], dtype=object)
    n = 0
    if not devkit:
        rows = []
        for c in range(1, num_classes + 1):
            for k in range(per_class):
                n += 1
                rel = f"car_ims/{n:06d}.jpg"
                write_image(root / rel, seed=1000 + n)
                rows.append({"relative_im_path": rel, "bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 20, "bbox_y2": 15,
                             "class": c, "test": k % 2})
        savemat(root / "cars_annos.mat", {"annotations": _struct(rows), "class_names": names[None, :]})
    else:
        parts: dict[str, list[dict]] = {"cars_train": [], "cars_test": []}
        for c in range(1, num_classes + 1):
            for k in range(per_class):
                n += 1
                folder = "cars_train" if k % 2 == 0 else "cars_test"
                fname = f"{n:05d}.jpg"
                write_image(root / folder / fname, seed=2000 + n)
                parts[folder].append({"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 20, "bbox_y2": 15, "class": c,
                                      "fname": fname})
        (root / "devkit").mkdir(parents=True, exist_ok=True)
        savemat(root / "devkit" / "cars_meta.mat", {"class_names": names[None, :]})
        savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _struct(parts["cars_train"])})
        savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _struct(parts["cars_test"])})
    return root


SOP_CATEGORIES = ("bicycle", "chair", "mug")


def make_sop(root: Path, train_classes: int = 4, test_classes: int = 4, per_class: int = 2) -> Path:
    """Stanford_Online_Products/: <category>_final/<product>_<n>.JPG + Ebay_train.txt / Ebay_test.txt."""
    header = "image_id class_id super_class_id path"
    image_id, class_id = 0, 0
    for name, count in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        lines = [header]
        for _ in range(count):
            class_id += 1
            sup = class_id % len(SOP_CATEGORIES)
            product = 111085122800 + class_id
            for k in range(per_class):
                image_id += 1
                rel = f"{SOP_CATEGORIES[sup]}_final/{product}_{k}.JPG"
                write_image(root / rel, seed=3000 + image_id)
                lines.append(f"{image_id} {class_id} {sup + 1} {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def make_inshop(root: Path, train_items: int = 4, test_items: int = 4) -> Path:
    """In-Shop: img/{MEN,WOMEN}/<Category>/id_XXXXXXXX/NN_K_view.jpg + Eval/list_eval_partition.txt."""
    rows = []
    n = 0
    for item in range(1, train_items + test_items + 1):
        item_id = f"id_{item * 7:08d}"
        gender = "WOMEN" if item % 2 else "MEN"
        if item <= train_items:
            statuses = ["train", "train"]
        else:
            statuses = ["query", "gallery", "gallery"]
        for k, status in enumerate(statuses):
            n += 1
            rel = f"img/{gender}/Dresses/{item_id}/{k + 1:02d}_1_front.jpg"
            write_image(root / rel, seed=4000 + n)
            rows.append(f"{rel}    {item_id}   {status}")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return root


def make_folder(root: Path, classes=("bags/tote", "bags/clutch", "hats", "shoes", "scarves", "belts"), per_class: int = 3,
                under: str = "", seed: int = 5000, junk: bool = False) -> list[str]:
    """The folder layout: ``root/<under>/<class>/<k>.jpg`` (distinct bytes per file); returns the relative paths.
    ``junk``: a hidden file, a hidden folder with an image and a text file per class, which the reader skips."""
    paths = []
    for c, name in enumerate(classes):
        for k in range(per_class):
            rel = "/".join(p for p in (under, name, f"{k:03d}.jpg") if p)
            write_image(root / rel, seed=seed + 100 * c + k)
            paths.append(rel)
        if junk:
            folder = root / under / name
            (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
            (folder / "notes.txt").write_text("not an image")
            write_image(folder / ".thumbs" / "000.jpg", seed=seed + 100 * c + 99)
    return paths


def write_table(path: Path, rows: list[dict], fmt: str | None = None) -> Path:
    """``rows`` as a CSV (or Parquet, by suffix or ``fmt``) table."""
    import pandas as pd

    df = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if (fmt or path.suffix.lstrip(".")) == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def make_boxed(root: Path, num_classes: int = 4, per_class: int = 4, size=(64, 48), ext: str = "png"):
    """Images with a bounding box each, and the same images cut to their boxes under ``root / "cropped"``: a stage
    given the boxed rows must produce exactly what it produces from the cropped copies without boxes. Returns
    ``(rows with x_1 … y_2, the same rows without them)``; every row is a test row of role ``both``."""
    import pandas as pd

    rows = []
    for c in range(num_classes):
        for k in range(per_class):
            rng = np.random.default_rng(700 + 10 * c + k)
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            x1, y1 = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            x2, y2 = x1 + size[0] // 3 + k, y1 + size[1] // 3
            rel = f"c{c}/{k}.{ext}"
            for base, img in ((root, arr), (root / "cropped", arr[y1:y2, x1:x2])):
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(img)).save(base / rel)
            rows.append({"path": rel, "label": c, "class_name": f"c{c}", "split": "test", "role": "both",
                         "x_1": float(x1), "y_1": float(y1), "x_2": float(x2), "y_2": float(y2)})
    boxed = pd.DataFrame(rows)
    return boxed, boxed.drop(columns=["x_1", "y_1", "x_2", "y_2"])


def split_summary(df) -> dict[str, tuple[int, int]]:
    """``{split: (images, classes)}`` of a manifest, for the readers' split tests."""
    return {s: (int((df.split == s).sum()), int(df.loc[df.split == s, "label"].nunique())) for s in ("train", "val", "test")}
