"""Every refusal in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("gateway")
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 499: "cancelled", 502: "server_error", 503: "server_error"}
# pydantic names the union member it tried in an error's location ("str", "list[...]", "VoiceRef"): not a field.
_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "none", "tagged-union", "union"}


class APIError(HTTPException):
    """An HTTPException subclass so FastAPI re-raises it untouched while it parses a body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.message, self.code, self.param = message, code, param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def field_path(loc: tuple) -> str | None:
    """``messages[0].content[1].input_audio.data`` from pydantic's location, union member labels left out."""
    path, previous = "", None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _TYPE_LABELS and not part[0].isupper():
            if part != previous:  # a discriminated union repeats the tag before the member's own field
                path += f".{part}" if path else part
        previous = part
    return path or None


def validation_error_response(errors: list[dict]) -> JSONResponse:
    """400 naming the most specific field that failed (the deepest location: the union member that fit best)."""
    if not errors:
        return error_response(400, "invalid request", "invalid_request")
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "the request body is not valid JSON", "invalid_json")
    located = [(e, [p for p in e.get("loc", ()) if p != "body"]) for e in errors]
    error, loc = max(located, key=lambda item: len(item[1]))
    param = field_path(tuple(loc))
    return error_response(400, f"{param + ': ' if param else ''}{error.get('msg', 'invalid value')}", "invalid_request",
                          param)


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI's shape for every error a route or FastAPI raises, and no traceback ever leaves the gateway."""

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return error_response(exc.status_code, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        return validation_error_response(list(exc.errors()))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal error in the gateway", "internal_error")
