"""``/v1/realtime``: the WebSocket voice session of ``gateway/realtime.py``, on a router built from the state.

The key and the Origin were checked at the door (``gateway.limits.AuthGate``, ``OriginGate``) before the upgrade;
the realtime module checks the key again itself, so it stays safe mounted alone."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.websockets import WebSocket

from gateway.limits import Auth
from gateway.realtime import RealtimeLimits, _key, mount_realtime
from gateway.routes.deps import GatewayState


def websocket_principal(scope, receive, send, auth: Auth) -> str:
    """The principal of a socket's key, from its Authorization header or its key subprotocol (for ``AuthGate``)."""
    return _key(WebSocket(scope, receive, send), auth)[0]


def router(state: GatewayState) -> APIRouter:
    realtime = APIRouter()
    mount_realtime(realtime, state.auth, state.limiter, lambda: state.triton,
                   RealtimeLimits(stall_timeout_s=state.settings.stall_timeout_s))
    return realtime
