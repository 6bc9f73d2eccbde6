"""GET /v1/models: the one model this replica serves."""

import time

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.schemas import ModelCard, ModelList

router = APIRouter(tags=["models"])
STARTED = int(time.time())


@router.get("/v1/models", response_model=ModelList, summary="The served model, with its device and load format")
async def list_models(service: ServiceDep) -> ModelList:
    info = service.info
    return ModelList(data=[ModelCard(id=info.name, created=STARTED, root=info.source, max_model_len=info.max_model_len,
                                     device=info.device, dtype=info.dtype, load_format=info.load_format,
                                     num_parameters=info.num_parameters)])
