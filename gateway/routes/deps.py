"""What every router shares: the application state, the caller's principal, and the steps of a model request
(limits, upstream stream opening, clean-up however a stream ends)."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, AsyncIterator

import numpy as np
from fastapi import Depends, Request

from gateway.audio import AudioDurationError, DecodeLimits, decode_audio
from gateway.config import Settings
from gateway.errors import APIError
from gateway.limits import Auth, AuthFailures, Lease, Limiter
from gateway.metrics import Metrics
from gateway.triton import Triton, TritonError, TritonUnavailable
from gateway.voices import VoiceQuota, VoiceStore


@dataclass
class GatewayState:
    settings: Settings
    auth: Auth
    auth_failures: AuthFailures
    limiter: Limiter
    metrics: Metrics
    store: VoiceStore
    voice_aliases: dict[str, str]  # OpenAI voice name → preset
    triton: Triton | None = None  # made in the lifespan: grpc.aio binds to the running loop

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayState:
        return cls(settings, Auth(settings.api_keys), AuthFailures(settings.auth_failures_per_minute),
                   Limiter(settings.rate_per_minute, settings.max_concurrent), Metrics(),
                   VoiceStore(settings.db, VoiceQuota(settings.max_voices, settings.max_voice_bytes)), settings.aliases())

    def speaker(self, voice_id: str | None) -> str | None:
        """The preset a voice name speaks with: an alias's preset, else the name itself."""
        return self.voice_aliases.get(voice_id, voice_id) if voice_id is not None else None


def gateway_state(request: Request) -> GatewayState:
    return request.app.state.gateway


def caller(request: Request) -> str:
    """The caller's principal: ``AuthGate`` checked the key before the body was read; a router mounted without the
    gate (a unit test) checks it here."""
    principal = getattr(request.state, "principal", None)
    return principal if principal is not None else gateway_state(request).auth.check(request.headers.get("authorization"))


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def capped(asked: int | None, default: int, cap: int, param: str) -> int:
    if asked is not None and asked > cap:
        raise APIError(400, f"{param} is {asked}; this gateway allows at most {cap}", param=param)
    return asked or default


def served_model(table: dict[str, str], name: str, kind: str) -> str:
    if name not in table:
        raise APIError(404, f"model {name!r} does not exist; {kind} models: {', '.join(table)}", code="model_not_found",
                       param="model")
    return table[name]


def check_text(settings: Settings, text: str, param: str) -> None:
    if len(text) > settings.max_input_chars:
        raise APIError(400, f"{param} is {len(text)} characters; the limit is {settings.max_input_chars}",
                       code="string_above_max_length", param=param)


async def uploaded_voice(state: GatewayState, owner: str, voice_id: str | None, param: str):
    """The caller's uploaded voice for a ``voice_...`` id (404 when it has none), None for a preset's name."""
    if voice_id is None or not voice_id.startswith("voice_"):
        return None
    voice = await asyncio.to_thread(state.store.get, owner, voice_id)
    if voice is None:
        raise APIError(404, f"voice {voice_id!r} does not exist", code="voice_not_found", param=param)
    return voice


def checked_audio(settings: Settings, data: bytes, param: str) -> tuple[np.ndarray, int]:
    """(1 × samples float32, rate) of an uploaded file within the size and duration limits; decoding itself stops
    at the gateway's duration limit (``gateway/audio.py`` ``DecodeLimits``, never past the served prompt limit), so
    memory stays bounded whatever the file claims. Every duration refusal has one wording, whether the header, the
    decoder's cap or the decoded length found it."""
    if len(data) > settings.max_upload_bytes:
        raise APIError(413, f"audio file is larger than {settings.max_upload_bytes} bytes", code="upload_too_large",
                       param=param)

    def out_of_range(length: str) -> APIError:
        return APIError(400, f"audio is {length}; allowed {settings.min_upload_seconds:g}–"
                        f"{settings.max_upload_seconds:g} s", code="invalid_audio_duration", param=param)

    try:
        wave, rate = decode_audio(data, DecodeLimits(max_seconds=min(settings.max_upload_seconds, DecodeLimits.max_seconds)))
    except AudioDurationError as exc:
        length = f"longer than {exc.max_seconds:g} s" if exc.seconds is None else f"{exc.seconds:.2f} s"
        raise out_of_range(length) from exc
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_audio", param=param) from exc
    seconds = wave.shape[1] / rate
    if not settings.min_upload_seconds <= seconds <= settings.max_upload_seconds:
        raise out_of_range(f"{seconds:.2f} s")
    if not np.all(np.isfinite(wave)):
        raise APIError(400, "audio holds NaN or infinite samples", code="invalid_audio", param=param)
    return wave, rate


async def open_stream(state: GatewayState, model: str, tensors: dict, outputs: list[str]) -> tuple[dict, AsyncIterator[dict]]:
    """The first response and the rest; errors before the first response become HTTP errors."""
    if state.triton is None:
        raise APIError(503, "the gateway is starting", code="upstream_unavailable")
    stream = state.triton.stream(model, tensors, outputs)
    try:
        return await anext(stream), stream
    except StopAsyncIteration:
        raise APIError(502, f"{model} ended without a response", code="upstream_error") from None
    except TritonError as exc:
        await stream.aclose()
        raise APIError(exc.status, str(exc), code="invalid_input" if exc.bad_input else "upstream_error") from exc
    except TritonUnavailable as exc:
        raise APIError(503, str(exc), code="upstream_unavailable") from exc


async def guarded(state: GatewayState, chunks: AsyncIterator, lease: Lease, model: str, upstream: AsyncIterator,
                  on_end=lambda: None):
    """Yields ``chunks``; however they end, closes the Triton stream (a gRPC cancel if it was still running),
    releases the caller's slot and runs ``on_end``; counts the streams that did not run to their end."""
    done = False
    try:
        async with aclosing(chunks) as items:
            async for item in items:
                yield item
        done = True
    finally:
        await upstream.aclose()
        lease.release()
        on_end()
        if not done:
            state.metrics.triton_cancelled.labels(model).inc()


State = Annotated[GatewayState, Depends(gateway_state)]
Principal = Annotated[str, Depends(caller)]
