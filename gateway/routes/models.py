"""``GET /v1/models``: the public model names."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.routes.deps import Principal, State

router = APIRouter()


@router.get("/v1/models")
async def models(state: State, _principal: Principal):
    names = [*state.settings.speech_models, *state.settings.chat_models]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "stepfun-ai"} for n in names]}
