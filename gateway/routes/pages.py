"""``/`` (the web page), ``/health`` (readiness of the served models) and ``/metrics`` (Prometheus): no key needed."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import error_response
from gateway.routes.deps import State

STATIC = Path(__file__).parent.parent / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html")


@router.get("/health")
async def health(state: State):
    required = list(state.settings.required_models)
    missing = await state.triton.not_ready(required) if state.triton is not None else ["the gateway's Triton client"]
    if missing:
        return error_response(503, f"not ready: {', '.join(missing)}", "not_ready")
    return {"status": "ready", "models": required}


@router.get("/metrics")
async def prometheus(state: State):
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
