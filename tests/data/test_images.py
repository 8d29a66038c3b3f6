from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from deepmetric.data.images import (
    ImageDecodeError,
    ImageLimits,
    ImageTooLargeError,
    PathEscapeError,
    check_header,
    image_size,
    open_image,
    oriented_size,
    safe_join,
)
from tests.data.layouts import png_bytes
from tests.fixtures import STRICT_LIMITS, plant_image


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
        open_image(bomb, limits=ImageLimits(max_pixels=1_000_000))
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        image_size(bomb, limits=ImageLimits(max_pixels=1_000_000))
    # Pillow's own limit (warning range) is an error too, even with our limit off.
    huge = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1_000_000
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            open_image(png_bytes((1100, 1000), 0, mode="L"), limits=ImageLimits(max_pixels=None))
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


def _thin_png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 200).save(buf, "PNG")
    return buf.getvalue()


def test_thin_images_refused_from_the_header_quoting_the_limit():
    # 1×100,000 in ~300 bytes: within any pixel limit, but 64×6,400,000 once its short side is resized to 64.
    for size in [(1, 100_000), (2_000_000, 1)]:
        data = _thin_png(size)
        assert len(data) < 10_000
        for fn in (open_image, image_size):
            with pytest.raises(ImageTooLargeError, match=r"aspect ratio of [\d,]+:1, above the limit of 100:1 "
                                                         r"\(parameter max_aspect_ratio\)") as e:
                fn(data, name="thin.png")
            assert e.value.path == "thin.png"
    with pytest.raises(ImageTooLargeError, match="limit of 20:1"):
        open_image(png_bytes((30, 1)), limits=ImageLimits(max_aspect_ratio=20))
    assert open_image(png_bytes((20, 1)), limits=ImageLimits(max_aspect_ratio=20)).size == (20, 1)


def test_pillow_bomb_check_quotes_the_configured_limit():
    # Pillow refuses > MAX_IMAGE_PIXELS itself, inside Image.open, before our own check: the message must
    # still quote our limit, not Pillow's 178,956,970.
    huge = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1_000_000
        with pytest.raises(ImageTooLargeError) as e:
            open_image(png_bytes((3000, 1000), 0, mode="L"), limits=ImageLimits(max_pixels=500_000))
        assert "limit of 500,000 (parameter max_pixels)" in e.value.reason and "3,000,000 pixels" in e.value.reason
        assert "2000000" not in e.value.reason and "178" not in e.value.reason
    finally:
        Image.MAX_IMAGE_PIXELS = huge


_MEMORY_PROBE = r"""
import io, json, sys
from PIL import Image
from deepmetric.data.images import ImageDecodeError, ImageLimits
from deepmetric.data.transforms import InputSpec, eval_image, load_eval_image

def png(size):
    buf = io.BytesIO(); Image.new("L", size, 200).save(buf, "PNG"); return buf.getvalue()

out = []
for size in [(1, 100_000), (1, 2_000_000)]:
    data = png(size)
    for aspect in (100, None):  # with the aspect check off, the resize bound must still refuse
        try:
            load_eval_image(data, InputSpec(resize=64, crop=64), limits=ImageLimits(max_aspect_ratio=aspect),
                            name="thin.png")
            out.append("accepted")
        except ImageDecodeError as e:
            out.append(str(e))
peak_kb = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
print(json.dumps({"messages": out, "peak_mb": peak_kb / 1024}))
"""


def test_thin_images_cost_bounded_memory():
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert len(res["messages"]) == 4 and not any(m == "accepted" for m in res["messages"])
    assert all(m.startswith("thin.png: refused") for m in res["messages"]), res["messages"]
    assert "limit of 100:1 (parameter max_aspect_ratio)" in res["messages"][0]
    assert "above the limit of 40,000,000 (parameter max_pixels)" in res["messages"][1]
    # Before the fix: 1.5 GB for the first image, ~25 GB for the second. Python + Pillow + numpy is ~60 MB.
    assert res["peak_mb"] < 200, res


def test_image_limits_validate_their_values():
    from deepmetric.data.images import PILLOW_MAX_PIXELS

    assert ImageLimits(None, None).max_pixels is None
    with pytest.raises(ValueError, match="max_pixels must be in"):
        ImageLimits(max_pixels=PILLOW_MAX_PIXELS + 1)
    with pytest.raises(ValueError, match="max_aspect_ratio must be >= 1"):
        ImageLimits(max_aspect_ratio=0.5)


@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
def test_each_strict_limit_case_is_refused_by_its_limit_only(tmp_path, limit):
    """The cases the stage tests plant (tests.fixtures.STRICT_LIMITS): accepted under the default limits, so a
    stage that drops the parameter is caught; refused under the parameter, with its words."""
    params, size, words = STRICT_LIMITS[limit]
    plant_image(tmp_path / "x.png", size)
    assert open_image(tmp_path / "x.png").size == size
    with pytest.raises(ImageTooLargeError) as e:
        open_image(tmp_path / "x.png", limits=ImageLimits(**params))
    assert words in str(e.value) and e.value.path == str(tmp_path / "x.png")


def _jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    im = Image.new("RGB", size, (90, 120, 150))
    exif = im.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


def test_check_header_gives_format_mode_and_oriented_size_without_decoding():
    """What the GPU (nvJPEG) decode takes from the shared check: the format and mode from the header, the size
    once EXIF orientation applies, and no pixel decoded (a truncated file passes the header check; only the
    full decode, which nvJPEG does there, finds it)."""
    data = _jpeg((30, 10), orientation=6)
    img = check_header(data, "a.jpg", ImageLimits())
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (30, 10))
    assert oriented_size(img) == (10, 30) == image_size(data)
    assert oriented_size(check_header(_jpeg((30, 10)), "b.jpg", ImageLimits())) == (30, 10)
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buf, "JPEG")  # noise: the header is a small part
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]
    assert check_header(cut, "cut.jpg", ImageLimits()).size == (64, 64)
    with pytest.raises(ImageDecodeError, match="cut.jpg: truncated"):
        open_image(cut, name="cut.jpg")


def test_check_header_refuses_what_open_image_refuses_with_the_same_words():
    """The one check behind both decode paths: every refusal of open_image comes out of check_header, with the
    same type and message (the file named, the parameter of the limit quoted)."""
    cases = [
        (b"", ImageLimits(), ImageDecodeError, r"x.jpg: empty file \(0 bytes\)"),
        (b"not an image at all", ImageLimits(), ImageDecodeError, "x.jpg: not an image file"),
        (_jpeg((300, 200)), ImageLimits(max_pixels=50_000), ImageTooLargeError,
         r"x.jpg: refused as a decompression bomb: 300x200 = 60,000 pixels exceeds the limit of 50,000 "
         r"\(parameter max_pixels\)"),
        (_jpeg((300, 10)), ImageLimits(max_aspect_ratio=20), ImageTooLargeError,
         r"x.jpg: refused as too thin: 300x10 has an aspect ratio of 30:1, above the limit of 20:1 "
         r"\(parameter max_aspect_ratio\)"),
        # over both limits: the pixel limit is checked first, on either path
        (_jpeg((3000, 10)), ImageLimits(max_pixels=20_000, max_aspect_ratio=20), ImageTooLargeError,
         r"\(parameter max_pixels\)"),
    ]
    for data, limits, kind, words in cases:
        with pytest.raises(kind, match=words) as header:
            check_header(data, "x.jpg", limits)
        with pytest.raises(kind) as full:
            open_image(data, name="x.jpg", limits=limits)
        assert type(header.value) is type(full.value) and str(header.value) == str(full.value)
    assert check_header(_jpeg((300, 10)), "x.jpg", ImageLimits(max_aspect_ratio=None)).size == (300, 10)


def test_check_header_quotes_the_configured_limit_when_pillow_refuses_first():
    huge = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1_000_000
        with pytest.raises(ImageTooLargeError) as e:
            check_header(_jpeg((3000, 1000)), "big.jpg", ImageLimits(max_pixels=500_000))
        assert e.value.path == "big.jpg" and "limit of 500,000 (parameter max_pixels)" in e.value.reason
    finally:
        Image.MAX_IMAGE_PIXELS = huge
