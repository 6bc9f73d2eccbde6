"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves HTTP and its engine is alive (or loading)",
            responses={503: {"description": "the engine process died or stopped answering: restart the pod"}})
async def healthz(state: StateDep) -> JSONResponse:
    if state.engine_error is not None:
        return JSONResponse({"status": "engine dead", "reason": state.engine_error}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: model loaded, warmed up, engine alive, not draining",
            responses={503: {"description": "loading, draining, or the engine died"}})
async def readyz(state: StateDep) -> JSONResponse:
    if state.ready:
        return JSONResponse({"status": "ready", "model": state.service.info.name})
    if state.draining:
        status = "draining"
    elif state.load_error is not None:
        status = "failed"
    elif state.service is None:
        status = "loading"
    else:
        status = "engine dead"
    return JSONResponse({"status": status}, status_code=503)
