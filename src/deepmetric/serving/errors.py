"""How the service refuses: :class:`ApiError` (status, code, message) raised anywhere in a request, the
exception handlers that turn it and FastAPI's own errors into the JSON error shape, and the classification of
an image that cannot be used (413 too large, 400 truncated or corrupt, 415 not an image). A client that
disconnects mid-request is one log line (INFO), not a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from deepmetric.data.images import ImageDecodeError, ImageTooLargeError
from deepmetric.serving.responses import error_response

__all__ = ["ApiError", "add_exception_handlers", "image_error"]

log = logging.getLogger("uvicorn.error")  # the log `deepmetric serve --log-level` configures


class ApiError(Exception):
    """A refused request: answered with ``status`` and ``{"error": code, "message": message}`` (and ``headers``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def image_error(err: ImageDecodeError, name: str) -> ApiError:
    """The refusal of an uploaded image ``name`` that could not be used."""
    reason = err.reason
    low = reason.lower()
    if isinstance(err, ImageTooLargeError) or "decompression bomb" in low:
        return ApiError(413, "image_too_large", f"{name}: {reason}")
    if "truncated" in low:
        return ApiError(400, "truncated_image", f"{name}: {reason}")
    if "not an image" in low or "unrecognised format" in low or "empty file" in low:
        return ApiError(415, "not_an_image", f"{name}: {reason}")
    return ApiError(400, "corrupt_image", f"{name}: {reason}")


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return error_response(exc.status_code, code, str(exc.detail))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_request",
                          "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """A client that disconnected before its request was read: one log line, not a traceback (nobody reads the
    answer)."""
    client = request.client
    who = f"{client.host}:{client.port}" if client else "a client"
    log.info("%s disconnected during %s %s%s", who, request.method, request.url.path,
             f" ({exc})" if str(exc) else "")
    return error_response(400, "client_disconnected", "the client disconnected before the request was read")


async def _internal(request: Request, exc: Exception) -> JSONResponse:  # the service stays up
    return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")


def add_exception_handlers(app: FastAPI) -> None:
    """Every refusal as the JSON error shape: ours, FastAPI's 404/405/422, and a 500 for anything unexpected."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal)
