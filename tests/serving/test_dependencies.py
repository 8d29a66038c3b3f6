"""What handlers are given: the app's own state and settings, and the admin check (on the real app)."""

from __future__ import annotations

import asyncio

import pytest

from deepmetric.serving.config import ServerSettings
from deepmetric.serving.dependencies import get_settings, get_state

TOKEN = "s3cret-admin-token-0123456789"


def test_state_and_settings_are_the_apps_own(loaded):
    from starlette.requests import Request

    from deepmetric.serving.app import create_app

    settings = ServerSettings(max_images=3)
    app = create_app(loaded, settings)
    request = Request({"type": "http", "app": app, "headers": []})
    try:
        assert asyncio.run(get_state(request)) is app.state.serving
        assert app.state.serving.current.bundle is loaded
        assert asyncio.run(get_settings(request)) is settings
    finally:
        app.state.serving.close()


def test_admin_calls_are_disabled_without_a_token(client):
    r = client().post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and r.json()["error"] == "admin_disabled" and "--admin-token-file" in r.json()["message"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-wrong-token", f"Basic {TOKEN}", TOKEN,
                                           f"Bearer {TOKEN}x", "Bearer "])
def test_admin_calls_need_the_bearer_token(client, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = client(admin_token=TOKEN).post("/v1/admin/reload", headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "])
def test_the_token_passes_the_check(client, authorization):
    r = client(admin_token=TOKEN).post("/v1/admin/reload", headers={"Authorization": authorization})
    assert r.status_code == 200 and r.json()["status"] == "unchanged"
