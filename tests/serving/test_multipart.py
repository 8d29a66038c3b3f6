"""The images of an upload, from the body's bytes and Content-Type alone (no request, no server): every refusal
with its status, code and message."""

from __future__ import annotations

import asyncio

import pytest

from deepmetric.serving.errors import ApiError
from deepmetric.serving.multipart import FIELD, MAX_FIELDS, check_framing, parse_images, require_multipart
from tests.server_fixtures import multipart

LIMITS = {"max_images": 3, "max_part_size": 1_000}


def parse(body: bytes, ctype: str, **limits) -> list[tuple[str, bytes]]:
    return asyncio.run(parse_images(body, ctype, **{**LIMITS, **limits}))


def refused(body: bytes, ctype: str, **limits) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse(body, ctype, **limits)
    return e.value


def test_files_in_order_with_their_names_and_bytes():
    big = bytes(range(256)) * 8_000  # 2 MB: spooled to a temporary file by the parser
    body, ctype = multipart([(FIELD, "a.png", b"\x89PNG first"), ("other", "x.bin", b"ignored"),
                             (FIELD, "b.jpg", big)], fields=[("note", "text is ignored")])
    assert parse(body, ctype) == [("a.png", b"\x89PNG first"), ("b.jpg", big)]


def test_an_unnamed_file_part_is_named_by_its_position():
    body, ctype = multipart([(FIELD, "a.png", b"1"), (FIELD, "", b"2")])
    assert parse(body, ctype) == [("a.png", b"1"), ("image[1]", b"2")]


def test_content_type_must_say_multipart():
    require_multipart("multipart/form-data; boundary=x")
    require_multipart("Multipart/Form-Data; boundary=x")
    with pytest.raises(ApiError) as e:
        require_multipart("application/json")
    assert (e.value.status, e.value.code) == (415, "not_multipart")
    assert "multipart/form-data in the field 'image'" in e.value.message and "'application/json'" in e.value.message


def test_framing_boundary_and_close_delimiter():
    body, ctype = multipart([(FIELD, "a.png", b"data")])
    check_framing(ctype, body)
    e = refused(body, "multipart/form-data")
    assert (e.status, e.code) == (400, "bad_multipart") and "no boundary parameter" in e.message
    for cut in (body[: body.rindex(b"\r\n--")], body[: len(body) // 2], body[: body.rindex(b"--")], b""):
        e = refused(cut, ctype)
        assert (e.status, e.code) == (400, "bad_multipart") and "not terminated" in e.message
        assert f"{len(cut):,} bytes received" in e.message


def test_no_image_in_the_field():
    body, ctype = multipart([("picture", "x.png", b"data")], fields=[("note", "hi")])
    e = refused(body, ctype)
    assert (e.status, e.code) == (400, "no_image")
    assert e.message == "no file in the multipart field 'image' (fields sent: ['note', 'picture'])"
    body, ctype = multipart([])
    assert refused(body, ctype).message == "no file in the multipart field 'image'"
    body, ctype = multipart([], fields=[(FIELD, "text")])
    e = refused(body, ctype)
    assert (e.status, e.code) == (400, "no_image") and e.message == "field 'image' #0 is text, not a file upload"


def test_a_media_type_that_only_starts_like_multipart_has_no_form():
    body, ctype = multipart([(FIELD, "a.png", b"data")])
    e = refused(body, ctype.replace("form-data", "form-datax"))
    assert (e.status, e.code) == (400, "no_image")


def test_too_many_images():
    body, ctype = multipart([(FIELD, f"{i}.png", b"x") for i in range(4)])
    e = refused(body, ctype)
    assert (e.status, e.code) == (413, "too_many_images")
    assert e.message == "4 images in one request; the limit is 3 (setting max_images)"
    assert len(parse(body, ctype, max_images=4)) == 4
    # max_images + 2 files and more: the parser stops at max_images + 1 files, the refusal is the same 413 (issue 23:
    # it was a 400 bad_multipart, "Too many files", from 34 images on at the default limit of 32)
    for n in (5, 9, 40):
        body, ctype = multipart([(FIELD, f"{i}.png", b"x") for i in range(n)])
        e = refused(body, ctype)
        assert (e.status, e.code) == (413, "too_many_images")
        assert e.message == "more than 4 files in one request; the limit is 3 images (setting max_images)"
    # files in other fields count towards the parser's limit as well
    body, ctype = multipart([(FIELD, "a.png", b"x"), *[("other", f"{i}.bin", b"x") for i in range(5)]])
    assert (refused(body, ctype).status, refused(body, ctype).code) == (413, "too_many_images")


def test_malformed_bodies_are_bad_multipart():
    body, ctype = multipart([], fields=[(f"f{i}", "v") for i in range(MAX_FIELDS + 1)])
    e = refused(body, ctype)
    assert (e.status, e.code) == (400, "bad_multipart") and e.message.startswith("malformed multipart body: Too many fields")
    body, ctype = multipart([], fields=[("f", "v" * 2_000)])
    e = refused(body, ctype)
    assert (e.status, e.code) == (400, "bad_multipart") and "Part exceeded maximum size of 0KB" in e.message
    boundary = ctype.split("boundary=")[1]
    nameless = (f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{boundary}--\r\n").encode()
    e = refused(nameless, ctype)
    assert (e.status, e.code) == (400, "bad_multipart") and '"name" must be provided' in e.message
