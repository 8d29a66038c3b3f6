"""What route handlers are given (FastAPI dependencies): the process's serving state, its settings, and the
admin check. ``create_app`` puts them on ``app.state``; nothing reaches a handler through a closure."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from deepmetric.serving.config import ServerSettings
from deepmetric.serving.errors import ApiError
from deepmetric.serving.state import ServingState

__all__ = ["Settings", "State", "get_settings", "get_state", "require_admin"]


# Coroutines, not plain functions: FastAPI runs a plain dependency in its thread pool, a hop per request.
async def get_state(request: Request) -> ServingState:
    """The bundle version(s) this process serves, its decode pool and reloads."""
    return request.app.state.serving


async def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


State = Annotated[ServingState, Depends(get_state)]
Settings = Annotated[ServerSettings, Depends(get_settings)]


async def require_admin(request: Request) -> None:
    """Admin calls need the admin token as ``Authorization: Bearer <token>`` (403 when the server has none, 401
    when the request does not carry it)."""
    token = request.app.state.admin_token
    if not token:
        raise ApiError(403, "admin_disabled", "admin calls are disabled: start the server with "
                       "--admin-token-file (or DEEPMETRIC_ADMIN_TOKEN) to enable them")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong admin token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": "Bearer"})
