"""The built-in dataset: letters and digits rendered from the fonts that ship inside the matplotlib wheel.

A class is one letter or digit codepoint (Unicode categories L* and Nd: Latin, Latin-1 and Extended, Greek,
Cyrillic, ...) that at least ``min_fonts`` distinct fonts really draw; an image is that character in one font
(black on white, centred on its ink, one fixed font size so that ``o`` and ``O`` differ), plus optional seeded
jittered copies. The result is written in CUB-200-2011's own layout so the CUB reader serves it:

    images/<NNN>.<U+XXXX_NAME>/<font>_<k>.png, images.txt, image_class_labels.txt, classes.txt, glyphs.json

"Really draws it" means: the font's cmap has the codepoint; the glyph's PostScript name does not say it is a
different character (the TeX symbol fonts cmsy10/cmex10 map ASCII letters to math symbols: a font where more
than a quarter of the ASCII letters/digits are such mismatches is left out entirely); the glyph is not a
fallback shared by many codepoints (LastResort); and the rendering is neither empty nor the font's .notdef
box. STIX "NonUni" and size variants map no letters at all, so they contribute nothing. Characters that render
byte-identically to an already chosen class (Latin A, Greek Alpha, Cyrillic A) are homoglyphs: the class is
skipped when most of its images duplicate another class's, otherwise just the duplicate images are dropped, so
no two classes share an image.

Everything is deterministic: fonts in a fixed order, classes ordered by (most fonts, codepoint), class ids
assigned by a seeded permutation, jitter from ``numpy.random.default_rng([seed, codepoint, font, copy])``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GlyphParams", "FontInfo", "discover_fonts", "render_glyph_dataset", "write_tree"]

_SYMBOLIC_FRACTION = 0.25  # font left out when this share of its ASCII letters/digits map to other glyphs
_FALLBACK_SHARED = 4  # a glyph serving more than this many letter/digit codepoints is a fallback box
_NOTDEF_PROBE = 0x10FFFD  # a private-use codepoint no font maps: renders the .notdef glyph


class GlyphParams(BaseModel):
    """``glyphs:`` parameters (conf/base/parameters_glyphs.yml)."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(default=200, ge=2)
    min_fonts: int = Field(default=8, ge=2)
    image_size: int = Field(default=64, ge=16, le=512)
    # Font size as a fraction of the image size (capitals are ~0.7 of it).
    font_scale: float = Field(default=0.7, gt=0.1, le=1.0)
    # Extra seeded copies per font with a small random scale / shift / rotation (0: none).
    jitter_copies: int = Field(default=0, ge=0, le=20)
    jitter_scale: float = Field(default=0.1, ge=0, le=0.5)
    jitter_shift: float = Field(default=0.06, ge=0, le=0.3)  # fraction of the image size
    jitter_rotate: float = Field(default=8.0, ge=0, le=45)  # degrees
    # Also use fonts installed on the system (fc-list, /usr/share/fonts); off by default so the set is the
    # same on every machine with the same matplotlib wheel.
    system_fonts: bool = False
    seed: int = 0


@dataclass(frozen=True)
class FontInfo:
    path: str
    name: str  # a short unique name used in file names
    full_name: str


def _matplotlib_font_dir() -> Path:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is not installed: its wheel provides the fonts of the glyph dataset")
    return Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"


def _system_font_files() -> list[Path]:
    files: set[Path] = set()
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
            files.update(Path(line.strip()) for line in out.splitlines() if line.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    for d in (Path("/usr/share/fonts"), Path("/usr/local/share/fonts")):
        if d.is_dir():
            files.update(p for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    return sorted(p for p in files if p.suffix.lower() in (".ttf", ".otf") and p.is_file())


def discover_fonts(system_fonts: bool = False) -> list[FontInfo]:
    """matplotlib's bundled fonts (sorted by file name), then system fonts; duplicates by full name skipped."""
    from fontTools.ttLib import TTFont

    candidates = sorted(_matplotlib_font_dir().glob("*.ttf"))
    if system_fonts:
        candidates += _system_font_files()
    fonts: list[FontInfo] = []
    seen_full: set[str] = set()
    seen_stem: set[str] = set()
    for path in candidates:
        try:
            tt = TTFont(str(path), lazy=True)
            full = tt["name"].getDebugName(4) or path.stem
        except Exception:
            continue
        if full in seen_full:
            continue
        seen_full.add(full)
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in path.stem)
        name, i = stem, 2
        while name in seen_stem:
            name, i = f"{stem}_{i}", i + 1
        seen_stem.add(name)
        fonts.append(FontInfo(str(path), name, full))
    return fonts


_NEUTRAL_NAME = re.compile(r"^(uni[0-9A-Fa-f]{4,}|u[0-9A-Fa-f]{4,6}|glyph\d+|gid\d+|cid\d+|g\d+)(\..*)?$")
# Letter categories that are letters one draws on their own: modifier letters (Lm: ˆ ˇ ʰ) are left out.
_CLASS_CATEGORIES = {"Lu", "Ll", "Lt", "Lo", "Nd"}


def _is_class_char(cp: int) -> bool:
    return unicodedata.category(chr(cp)) in _CLASS_CATEGORIES and bool(unicodedata.name(chr(cp), ""))


def _agl_name(cp: int) -> str:
    from fontTools.agl import UV2AGL

    return UV2AGL.get(cp, "")


@functools.lru_cache(maxsize=256)
def _usable_codepoints(font: FontInfo) -> frozenset[int]:
    """Letter/digit codepoints whose cmap entry is a real drawing of that character (no rendering yet)."""
    from fontTools.agl import toUnicode
    from fontTools.ttLib import TTFont

    try:
        cmap = TTFont(font.path, lazy=True).getBestCmap() or {}
    except Exception:
        return frozenset()
    letters = {cp: g for cp, g in cmap.items() if _is_class_char(cp)}
    if not letters:
        return frozenset()

    def mismatch(cp: int, glyph: str) -> bool:
        """The glyph's name says it is another character (e.g. cmsy10 maps 'a' to 'turnstileright')."""
        if _NEUTRAL_NAME.match(glyph):
            return False  # synthetic names ("glyph12", "uni0041", "cid123") carry no meaning
        expected = _agl_name(cp)
        if expected and (glyph == expected or glyph.startswith(expected + ".") or
                         (cp < 128 and glyph.startswith(expected))):  # "zerooldstyle", "a.alt"
            return False
        u = toUnicode(glyph.split(".")[0])
        if u:
            return unicodedata.normalize("NFKC", u) != unicodedata.normalize("NFKC", chr(cp))
        # An unknown, non-synthetic name: only ASCII letters and digits have names fixed enough to judge.
        return cp < 128

    ascii_alnum = [cp for cp in letters if cp < 128]
    if ascii_alnum:
        bad = sum(mismatch(cp, letters[cp]) for cp in ascii_alnum)
        if bad > _SYMBOLIC_FRACTION * len(ascii_alnum):
            return frozenset()  # a symbol font that maps letters to math symbols (cmsy10, cmex10)
    users: dict[str, int] = {}
    for g in letters.values():
        users[g] = users.get(g, 0) + 1
    shared = sum(1 for g in letters.values() if users[g] > _FALLBACK_SHARED)
    if shared * 2 > len(letters):
        return frozenset()  # a fallback font (LastResort): boxes, not letters
    return frozenset(cp for cp, g in letters.items() if users[g] <= _FALLBACK_SHARED and not mismatch(cp, g))


class _Renderer:
    def __init__(self, font: FontInfo, params: GlyphParams) -> None:
        self.font = font
        self.params = params
        self.size = params.image_size
        self.pil_font = ImageFont.truetype(font.path, size=max(4, round(params.font_scale * self.size)))
        self.notdef = self._ink(chr(_NOTDEF_PROBE))

    def _ink(self, ch: str) -> Image.Image | None:
        """The character's ink (L mode, black on white), cropped to its bounding box; None if empty."""
        pad = self.size
        canvas = Image.new("L", (3 * pad, 3 * pad), 255)
        ImageDraw.Draw(canvas).text((1.5 * pad, 1.5 * pad), ch, font=self.pil_font, fill=0, anchor="mm")
        bbox = ImageChops.invert(canvas).getbbox()
        return None if bbox is None else canvas.crop(bbox)

    def render(self, cp: int, copies: int) -> list[Image.Image] | None:
        ink = self._ink(chr(cp))
        if ink is None:
            return None
        if self.notdef is not None and ink.size == self.notdef.size and ink.tobytes() == self.notdef.tobytes():
            return None
        images = [self._place(ink, 1.0, 0.0, 0.0, 0.0)]
        if copies:
            p = self.params
            font_key = int.from_bytes(hashlib.sha256(self.font.name.encode()).digest()[:4], "little")
            for k in range(copies):
                rng = np.random.default_rng([p.seed, cp, font_key, k])
                s = 1.0 + rng.uniform(-p.jitter_scale, p.jitter_scale)
                dx, dy = rng.uniform(-p.jitter_shift, p.jitter_shift, size=2) * self.size
                angle = rng.uniform(-p.jitter_rotate, p.jitter_rotate)
                images.append(self._place(ink, s, float(dx), float(dy), float(angle)))
        return images

    def _place(self, ink: Image.Image, scale: float, dx: float, dy: float, angle: float) -> Image.Image:
        size = self.size
        room = size - 4  # keep a 2-pixel margin
        w, h = ink.size
        fit = min(1.0, room / w, room / h) * scale
        if fit != 1.0:
            ink = ink.resize((max(1, round(w * fit)), max(1, round(h * fit))), Image.LANCZOS)
            w, h = ink.size
        out = Image.new("L", (size, size), 255)
        out.paste(ink, (int(round((size - w) / 2 + dx)), int(round((size - h) / 2 + dy))))
        if angle:
            out = out.rotate(angle, resample=Image.BILINEAR, fillcolor=255)
        return out


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _class_folder_name(cp: int) -> str:
    name = unicodedata.name(chr(cp))
    safe = "".join(ch if ch.isalnum() else "_" for ch in name)
    return f"U{cp:04X}_{safe}"


def render_glyph_dataset(params: GlyphParams | dict[str, Any] | None = None,
                         fonts: Sequence[FontInfo] | None = None) -> dict[str, bytes]:
    """Render the glyph dataset; returns ``{relative posix path: bytes}`` in CUB-200-2011's layout."""
    if not isinstance(params, GlyphParams):
        params = GlyphParams.model_validate(dict(params or {}))
    fonts = list(fonts) if fonts is not None else discover_fonts(params.system_fonts)
    usable = {f.name: _usable_codepoints(f) for f in fonts}
    fonts = [f for f in fonts if usable[f.name]]
    counts: dict[int, int] = {}
    for f in fonts:
        for cp in usable[f.name]:
            counts[cp] = counts.get(cp, 0) + 1
    # Most fonts first, then codepoint: the classes with the most styles win, in a fixed order.
    candidates = sorted((cp for cp, n in counts.items() if n >= params.min_fonts), key=lambda c: (-counts[c], c))

    renderers: dict[str, _Renderer] = {}
    chosen: list[tuple[int, list[tuple[str, int, bytes]]]] = []
    owner: dict[bytes, int] = {}  # pixel digest -> codepoint that owns that image
    for cp in candidates:
        if len(chosen) == params.num_classes:
            break
        imgs: list[tuple[str, int, bytes, bytes]] = []
        for f in fonts:
            if cp not in usable[f.name]:
                continue
            r = renderers.get(f.name) or renderers.setdefault(f.name, _Renderer(f, params))
            rendered = r.render(cp, params.jitter_copies)
            if rendered is None:
                continue
            for k, im in enumerate(rendered):
                imgs.append((f.name, k, hashlib.sha256(im.tobytes()).digest(), _png(im)))
        seen_here: set[bytes] = set()
        kept = []
        dup = 0
        for fname, k, digest, png in imgs:
            if digest in owner:
                dup += 1
                continue
            if digest in seen_here:  # two fonts drawing the same pixels: keep one
                continue
            seen_here.add(digest)
            kept.append((fname, k, png))
        fonts_kept = len({fname for fname, _, _ in kept})
        if dup * 2 > len(imgs) or fonts_kept < params.min_fonts:
            continue  # a homoglyph of a chosen class, or too few distinct drawings
        for d in seen_here:
            owner[d] = cp
        chosen.append((cp, kept))
    if len(chosen) < params.num_classes:
        raise ValueError(
            f"only {len(chosen)} letter/digit classes are drawn by at least {params.min_fonts} distinct fonts "
            f"({len(fonts)} usable fonts); lower glyphs.num_classes (now {params.num_classes}) or "
            "glyphs.min_fonts, or set glyphs.system_fonts: true"
        )
    # Class ids by a seeded permutation, so that train (first half) and test classes mix scripts and cases.
    order = np.random.default_rng(params.seed).permutation(len(chosen))
    chosen = [chosen[i] for i in order]
    return write_tree(chosen, params, fonts)


def write_tree(chosen: list[tuple[int, list[tuple[str, int, bytes]]]], params: GlyphParams,
               fonts: Sequence[FontInfo]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    images_txt, labels_txt, classes_txt = [], [], []
    width = max(3, len(str(len(chosen))))
    image_id = 0
    for class_id, (cp, imgs) in enumerate(chosen, 1):
        folder = f"{class_id:0{width}d}.{_class_folder_name(cp)}"
        classes_txt.append(f"{class_id} {folder}")
        for fname, k, png in imgs:
            image_id += 1
            rel = f"{folder}/{fname}_{k}.png"
            files[f"images/{rel}"] = png
            images_txt.append(f"{image_id} {rel}")
            labels_txt.append(f"{image_id} {class_id}")
    files["images.txt"] = ("\n".join(images_txt) + "\n").encode()
    files["image_class_labels.txt"] = ("\n".join(labels_txt) + "\n").encode()
    files["classes.txt"] = ("\n".join(classes_txt) + "\n").encode()
    used = sorted({fname for _, imgs in chosen for fname, _, _ in imgs})
    meta = {
        "format": "CUB-200-2011 layout (deepmetric built-in glyph dataset)",
        "params": params.model_dump(),
        "num_classes": len(chosen),
        "num_images": image_id,
        "fonts": {f.name: f.full_name for f in fonts if f.name in used},
        "classes": {str(i): {"codepoint": f"U+{cp:04X}", "char": chr(cp), "images": len(imgs)}
                    for i, (cp, imgs) in enumerate(chosen, 1)},
    }
    files["glyphs.json"] = (json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
    return files
