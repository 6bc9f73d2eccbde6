"""Liveness and readiness probes: what each answers in each phase is app/api/lifecycle.py's table."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves HTTP and its engine is alive (or loading)",
            responses={503: {"description": "the engine process died or stopped answering, or the model failed "
                                            "to load: restart the pod"}})
async def healthz(state: StateDep) -> JSONResponse:
    status, body = state.lifecycle.probe("live")
    return JSONResponse(body, status_code=status)


@router.get("/readyz", summary="Readiness: model loaded, warmed up, engine alive, not draining",
            responses={503: {"description": "loading, draining, failed, or the engine died"}})
async def readyz(state: StateDep) -> JSONResponse:
    status, body = state.lifecycle.probe("ready")
    if status == 200:
        body["model"] = state.service.info.name
    return JSONResponse(body, status_code=status)
