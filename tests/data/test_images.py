from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from deepmetric.data.images import ImageDecodeError, PathEscapeError, image_size, open_image, safe_join
from tests.data.layouts import png_bytes


@pytest.mark.parametrize(
    "mode,fmt,color,expected",
    [
        ("L", "PNG", 128, (128, 128, 128)),
        ("1", "PNG", 1, (255, 255, 255)),
        ("CMYK", "JPEG", (0, 0, 0, 0), (255, 255, 255)),
        ("P", "PNG", 3, None),
        ("RGBA", "PNG", (255, 0, 0, 0), (255, 255, 255)),  # transparent -> white
        ("RGBA", "PNG", (255, 0, 0, 255), (255, 0, 0)),
        ("LA", "PNG", (0, 0), (255, 255, 255)),
        ("I;16", "PNG", 65535, (255, 255, 255)),  # 16-bit scaled, not clipped
        ("I;16", "PNG", 32896, (128, 128, 128)),
        ("F", "TIFF", 1.0, None),
    ],
)
def test_modes_become_rgb(mode, fmt, color, expected):
    img = open_image(png_bytes((7, 5), color, mode=mode, fmt=fmt))
    assert img.mode == "RGB" and img.size == (7, 5)
    if expected is not None:
        px = img.getpixel((3, 2))
        assert all(abs(a - b) <= 2 for a, b in zip(px, expected)), px


def test_palette_with_transparency_composited_on_white():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    assert open_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied():
    im = Image.new("RGB", (30, 10), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 5, 10))  # white strip on the left
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW for display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = open_image(buf.getvalue())
    assert out.size == (10, 30)
    assert image_size(buf.getvalue()) == (10, 30)
    assert sum(out.getpixel((5, 2))) > 600  # the left strip is now on top


def test_bad_inputs_name_the_file_and_reason(tmp_path):
    good = png_bytes((50, 40), fmt="JPEG")
    cases = {
        "empty.jpg": (b"", r"empty file \(0 bytes\)"),
        "notes.jpg": (b"this is a text file\n", "not an image file"),
        "cut.jpg": (good[: len(good) // 2], "truncated"),
    }
    for name, (data, reason) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ImageDecodeError, match=reason) as e:
            open_image(p)
        assert str(p) in str(e.value) and e.value.path == str(p)
    with pytest.raises(ImageDecodeError, match="file not found"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="upload.png: not an image"):
        open_image(b"GIF89a-broken", name="upload.png")


def test_decompression_bomb_refused():
    bomb = png_bytes((4000, 4000), 0, mode="L")  # compresses to a few KB
    with pytest.raises(ImageDecodeError, match="decompression bomb: 4000x4000 = 16,000,000 pixels"):
        open_image(bomb, max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        image_size(bomb, max_pixels=1_000_000)
    # Pillow's own limit (warning range) is an error too, even with our limit off.
    huge = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1_000_000
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            open_image(png_bytes((1100, 1000), 0, mode="L"), max_pixels=None)
    finally:
        Image.MAX_IMAGE_PIXELS = huge


def test_safe_join_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert safe_join(root, "a/x.png") == root / "a" / "x.png"
    for rel in ["../secret.png", "a/../../x", "/etc/passwd", "C:/x.png", ""]:
        with pytest.raises(PathEscapeError):
            safe_join(root, rel)
    (tmp_path / "outside.png").write_bytes(b"x")
    os.symlink(tmp_path / "outside.png", root / "a" / "link.png")
    with pytest.raises(PathEscapeError, match="outside the dataset root"):
        safe_join(root, "a/link.png")
