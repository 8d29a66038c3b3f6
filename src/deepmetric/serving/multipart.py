"""The images of an upload: a multipart/form-data body → ``[(file name, bytes), …]``, or an :class:`ApiError`.

Plain functions of the body's bytes, its Content-Type and the limits — no request, no HTTP — so that every
refusal is testable on its own. The router reads the body (refusing more than ``max_upload_bytes``) and calls
:func:`require_multipart` before, :func:`parse_images` after. Parsing is Starlette's multipart parser
(python-multipart underneath), the one ``Request.form()`` uses, run on the body already read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from deepmetric.serving.errors import ApiError

#: The multipart field that carries the images (one file part per image).
FIELD = "image"
#: Non-file fields tolerated in a body (they are ignored); more is refused as malformed.
MAX_FIELDS = 100

__all__ = ["FIELD", "MAX_FIELDS", "check_framing", "parse_images", "require_multipart"]


def require_multipart(content_type: str) -> None:
    """415 unless the request says multipart/form-data (checked before the body is read)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(415, "not_multipart", f"send images as multipart/form-data in the field {FIELD!r} "
                                             f"(got Content-Type {content_type!r})")


def check_framing(content_type: str, body: bytes) -> None:
    """A boundary in the Content-Type and a close delimiter (``--BOUNDARY--``) in the body. The multipart
    parser accepts a body cut short and returns the parts it completed (often none), which would otherwise
    read as "no image"."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "malformed multipart body: the Content-Type has no boundary parameter")
    if b"--" + boundary + b"--" not in body:
        raise ApiError(400, "bad_multipart", "malformed multipart body: not terminated (no closing delimiter "
                                             f"--{boundary.decode('latin-1')}--; {len(body):,} bytes received)")


async def _form(body: bytes, content_type: str, max_images: int, max_part_size: int) -> FormData:
    media_type, _ = parse_options_header(content_type)
    if media_type != b"multipart/form-data":  # e.g. "multipart/form-datax": no form, as Request.form() has it
        return FormData()

    async def stream() -> AsyncIterator[bytes]:  # as Request.stream() feeds the parser: the body, then b""
        if body:
            yield body
        yield b""

    # One file more than allowed is parsed, so that parse_images can name the count; the parser stops at the next.
    parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=max_images + 1,
                             max_fields=MAX_FIELDS, max_part_size=max_part_size)
    try:
        return await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):  # Starlette's words for passing max_files
            raise ApiError(413, "too_many_images", f"more than {max_images + 1} files in one request; the limit is "
                                                   f"{max_images} images (setting max_images)") from None
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {e.message}") from None


async def parse_images(body: bytes, content_type: str, *, max_images: int,
                       max_part_size: int) -> list[tuple[str, bytes]]:
    """The files of the field ``image`` in ``body`` as ``(file name, bytes)`` in the order sent (an unnamed part is
    ``image[i]``). Refuses (:class:`ApiError`) a body without boundary or close delimiter, a malformed one, no file
    in the field, more than ``max_images`` files, a text value in the field. ``max_part_size`` bounds a non-file
    field. (A coroutine: a large file part is spooled to a temporary file through the thread pool.)"""
    check_framing(content_type, body)
    form = await _form(body, content_type, max_images, max_part_size)
    try:
        entries = form.getlist(FIELD)
        if not entries:
            others = sorted(set(form.keys()))
            raise ApiError(400, "no_image", f"no file in the multipart field {FIELD!r}"
                           + (f" (fields sent: {others})" if others else ""))
        if len(entries) > max_images:
            raise ApiError(413, "too_many_images",
                           f"{len(entries)} images in one request; the limit is {max_images} (setting max_images)")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, UploadFile):
                raise ApiError(400, "no_image", f"field {FIELD!r} #{i} is text, not a file upload")
            out.append((entry.filename or f"image[{i}]", await entry.read()))
        return out
    finally:
        await form.close()
