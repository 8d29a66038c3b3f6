from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from deepmetric.data.glyphs import GlyphParams, discover_fonts, render_glyph_dataset
from deepmetric.data.readers import read_dataset
from tests.fixtures import make_tiny_glyphs


def test_default_dataset_is_deterministic_and_big_enough():
    files = render_glyph_dataset(GlyphParams())
    meta = json.loads(files["glyphs.json"])
    assert meta["num_classes"] == 200 and meta["num_images"] >= 200 * 8
    assert all(c["images"] >= 8 for c in meta["classes"].values())
    # (how long rendering takes is a benchmark figure, not a unit-test assertion: it flakes on a shared machine)
    again = render_glyph_dataset(GlyphParams())
    assert again == files  # byte-identical
    # Symbol, fallback and non-letter fonts contribute nothing.
    used = set(meta["fonts"])
    assert not used & {"cmsy10", "cmex10", "LastResortHE-Regular", "STIXNonUni", "STIXSizOneSymReg"}
    assert {"DejaVuSans", "STIXGeneral", "cmr10"} <= used
    # No two classes share an image (homoglyphs such as Latin A / Greek Alpha are not separate classes).
    images = {k: v for k, v in files.items() if k.startswith("images/")}
    by_digest: dict[str, str] = {}
    for rel, data in images.items():
        px = hashlib.sha256(Image.open(io.BytesIO(data)).tobytes()).hexdigest()
        cls = rel.split("/")[1]
        assert by_digest.setdefault(px, cls) == cls, (rel, by_digest[px])


def test_tiny_glyphs_in_cub_layout(tmp_path):
    root = make_tiny_glyphs(tmp_path / "g", num_classes=12)
    df = read_dataset("glyphs", root, {"val_classes": 1})
    assert df.label.nunique() == 12
    assert {s: df.loc[df.split == s, "label"].nunique() for s in ("train", "val", "test")} == {
        "train": 5, "val": 1, "test": 6}
    img = Image.open(root / df.path.iloc[0])
    assert img.size == (64, 64) and img.mode == "L"
    assert img.getpixel((0, 0)) == 255 and min(img.getdata()) < 50  # black on white, with ink
    assert (df.dataset == "glyphs").all()
    assert df.class_name.str.match(r"^U[0-9A-F]{4,}_").all()


def test_jitter_copies_and_image_size():
    files = render_glyph_dataset(GlyphParams(num_classes=3, image_size=32, jitter_copies=2))
    meta = json.loads(files["glyphs.json"])
    pngs = [k for k in files if k.endswith(".png")]
    assert len(pngs) == meta["num_images"]
    assert any(k.endswith("_2.png") for k in pngs)
    assert Image.open(io.BytesIO(files[pngs[0]])).size == (32, 32)
    assert render_glyph_dataset(GlyphParams(num_classes=3, image_size=32, jitter_copies=2)) == files


def test_impossible_request_is_explained():
    with pytest.raises(ValueError, match="lower glyphs.num_classes"):
        render_glyph_dataset(GlyphParams(num_classes=50, min_fonts=30))


def test_fonts_come_from_the_matplotlib_wheel():
    fonts = discover_fonts()
    assert len(fonts) >= 20 and all("mpl-data" in f.path for f in fonts)
    assert len({f.name for f in fonts}) == len(fonts)
