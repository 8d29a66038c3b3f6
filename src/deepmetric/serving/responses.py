"""The two response shapes of the service: a JSON payload, and the error ``{"error": code, "message": text}``."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse, Response

__all__ = ["error_response", "json_response"]


def json_response(content: Any) -> Response:
    """A JSON response without FastAPI's jsonable_encoder pass (the payloads here are plain JSON types)."""
    return Response(json.dumps(content, separators=(",", ":")).encode(), media_type="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)
