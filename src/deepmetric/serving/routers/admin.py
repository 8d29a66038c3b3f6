"""``POST /v1/admin/reload``: load the bundle folder again and serve it, without dropping a request."""

from __future__ import annotations

import json
import os
import signal

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from deepmetric.bundle import BundleError
from deepmetric.serving.config import SUPERVISED_ENV
from deepmetric.serving.dependencies import State, require_admin
from deepmetric.serving.errors import ApiError
from deepmetric.serving.responses import json_response
from deepmetric.serving.state import bundle_summary

router = APIRouter()


@router.post("/v1/admin/reload", dependencies=[Depends(require_admin)])
async def admin_reload(state: State) -> Response:
    """Reload the bundle folder (verified first; refused → 409 and the current version keeps serving).
    Needs ``Authorization: Bearer <admin token>``. With several workers, every worker reloads."""
    try:
        result = await state.reload_async()
    except BundleError as e:
        raise ApiError(409, "bundle_refused", f"{e}; still serving "
                       + json.dumps(bundle_summary(state.current.bundle), sort_keys=True)) from None
    if os.environ.get(SUPERVISED_ENV) and result["status"] == "reloaded":
        os.kill(os.getppid(), signal.SIGHUP)  # the supervisor has every other worker reload as well
        result["workers"] = "all (signalled the supervisor)"
    return json_response(result)
