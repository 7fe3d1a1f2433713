"""The gateway's routes, one ``APIRouter`` per resource; each reads what it needs from ``request.app.state.gateway``
(a ``gateway.routes.deps.GatewayState``), so a router can be mounted and tested on a bare FastAPI app."""
