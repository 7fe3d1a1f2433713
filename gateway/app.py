"""The FastAPI application: ``create_app`` wires the routers (``gateway/routes/``), the state they share and the
door (pure ASGI middleware, outermost first): metrics, Origin/Host check, key check, body cap.

Streams are opened before the response starts: the first Triton response is awaited first, so a request the
served model rejects (unknown speaker, bad tag) gets a proper HTTP error instead of a broken 200 stream. After
that, audio leaves chunk by chunk; when the client goes away Starlette cancels the response task, which closes the
Triton stream (gRPC cancel) in ``Triton.stream``'s ``finally``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gateway.config import Settings
from gateway.errors import install_error_handlers
from gateway.limits import AuthGate, BodyLimit, OriginGate
from gateway.metrics import MetricsMiddleware
from gateway.routes import chat, models, pages, realtime, speech, voices
from gateway.routes.deps import GatewayState
from gateway.triton import Triton


def create_app(settings: Settings) -> FastAPI:
    settings.validate()
    state = GatewayState.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app):
        state.triton = Triton(settings.triton_grpc, settings.stall_timeout_s)  # grpc.aio binds to the running loop
        try:
            yield
        finally:
            await state.triton.close()
            state.store.close()

    app = FastAPI(title="Step-Audio gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = state
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    routers = (pages.router, models.router, speech.router, voices.router, chat.router, realtime.router(state))
    for router in routers:
        app.include_router(router)

    known = {route.path for router in routers for route in router.routes}  # metrics labels: never a client's path
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AuthGate, auth=state.auth, failures=state.auth_failures,  # before any body is read
                       websocket_principal=realtime.websocket_principal)
    app.add_middleware(OriginGate, allowed_origins=settings.allowed_origins, loopback_only=not state.auth.enabled)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, paths=known)  # outermost: counts refusals too
    return app
