"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is up and serving HTTP")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, warmed up, engine loop alive, not draining",
            responses={503: {"description": "loading, draining, or the engine loop died"}})
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
        status = "engine stopped"
    return JSONResponse({"status": status}, status_code=503)
