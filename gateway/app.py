"""The FastAPI application: routes, auth and limits, error shape, streaming to the client.

Streams are opened before the response starts: the first Triton response is awaited first, so a request the
served model rejects (unknown speaker, bad tag) gets a proper HTTP error instead of a broken 200 stream. After
that, audio leaves chunk by chunk; when the client goes away Starlette cancels the response task, which closes the
Triton stream (gRPC cancel) in ``Triton.stream``'s ``finally``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.audio import MEDIA_TYPES, StreamEncoder, decode_audio, encode_whole
from gateway.chat import ChatRequest, chat_tensors, split_messages
from gateway.config import Settings
from gateway.errors import APIError, error_response
from gateway.limits import Auth, Lease, Limiter
from gateway.metrics import Metrics, MetricsMiddleware
from gateway.realtime import mount_realtime
from gateway.speech import SpeechRequest, styled_text, tts_tensors
from gateway.triton import Triton, TritonError, TritonUnavailable
from gateway.voices import VoiceStore

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("gateway")
_SPEECH_OUTPUTS = ["WAVEFORM", "SAMPLE_RATE"]
_CHAT_OUTPUTS = ["TEXT_DELTA", "WAVEFORM", "SAMPLE_RATE", "USER_TRANSCRIPT"]


class BodyLimit:
    """Pure ASGI: refuses a body over ``limit`` bytes by its Content-Length, or while it arrives (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _error(self) -> APIError:
        return APIError(413, f"request body is larger than {self.limit} bytes", code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            error = self._error()
            return await error_response(413, error.message, error.code)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error()
            return message

        await self.app(scope, limited, send)


def create_app(settings: Settings) -> FastAPI:
    settings.validate()
    auth = Auth(settings.api_keys)
    limiter = Limiter(settings.rate_per_minute, settings.max_concurrent)
    metrics = Metrics()
    store = VoiceStore(settings.db)
    state: dict[str, Triton] = {}

    @asynccontextmanager
    async def lifespan(_app):
        state["triton"] = Triton(settings.triton_grpc, settings.stall_timeout_s)  # grpc.aio binds to the running loop
        try:
            yield
        finally:
            await state["triton"].close()
            store.close()

    app = FastAPI(title="Step-Audio gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    # ---- errors: always OpenAI's shape ------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return error_response(exc.status_code, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return error_response(400, f"{param + ': ' if param else ''}{first['msg']}", "invalid_request", param)

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal error in the gateway", "internal_error")

    # ---- helpers -----------------------------------------------------------------------------------------------
    def caller(request: Request) -> str:
        return auth.check(request.headers.get("authorization"))

    def triton() -> Triton:
        return state["triton"]

    async def open_stream(model: str, tensors: dict, outputs: list[str]) -> tuple[dict, AsyncIterator[dict]]:
        """The first response and the rest; errors before the first response become HTTP errors."""
        stream = triton().stream(model, tensors, outputs)
        try:
            return await anext(stream), stream
        except StopAsyncIteration:
            raise APIError(502, f"{model} ended without a response", code="upstream_error") from None
        except TritonError as exc:
            await stream.aclose()
            raise APIError(exc.status, str(exc), code="invalid_input" if exc.bad_input else "upstream_error") from exc
        except TritonUnavailable as exc:
            raise APIError(503, str(exc), code="upstream_unavailable") from exc

    async def guarded(chunks: AsyncIterator, lease: Lease, model: str, upstream: AsyncIterator, on_end=lambda: None):
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
                metrics.triton_cancelled.labels(model).inc()

    def checked_audio(data: bytes, param: str) -> tuple[np.ndarray, int]:
        """(channels × samples float32, rate) of an uploaded file within the size and duration limits."""
        if len(data) > settings.max_upload_bytes:
            raise APIError(413, f"audio file is larger than {settings.max_upload_bytes} bytes", code="upload_too_large", param=param)
        try:
            wave, rate = decode_audio(data)
        except ValueError as exc:
            raise APIError(400, str(exc), code="invalid_audio", param=param) from exc
        seconds = wave.shape[1] / rate
        if not 8000 <= rate <= 192000:
            raise APIError(400, f"sample rate {rate} Hz is outside 8000–192000", code="invalid_audio", param=param)
        if not settings.min_upload_seconds <= seconds <= settings.max_upload_seconds:
            raise APIError(400, f"audio is {seconds:.2f} s; allowed {settings.min_upload_seconds:g}–{settings.max_upload_seconds:g} s",
                           code="invalid_audio_duration", param=param)
        if not np.all(np.isfinite(wave)):
            raise APIError(400, "audio holds NaN or infinite samples", code="invalid_audio", param=param)
        return wave, rate

    def capped(asked: int | None, default: int, cap: int, param: str) -> int:
        if asked is not None and asked > cap:
            raise APIError(400, f"{param} is {asked}; this gateway allows at most {cap}", param=param)
        return asked or default

    def served_model(table: dict[str, str], name: str, kind: str) -> str:
        if name not in table:
            raise APIError(404, f"model {name!r} does not exist; {kind} models: {', '.join(table)}", code="model_not_found",
                           param="model")
        return table[name]

    async def uploaded_voice(key: str, voice_id: str, param: str):
        """The caller's uploaded voice for a ``voice_...`` id (404 when it has none), None for a preset's name."""
        if not voice_id.startswith("voice_"):
            return None
        voice = await asyncio.to_thread(store.get, key, voice_id)
        if voice is None:
            raise APIError(404, f"voice {voice_id!r} does not exist", code="voice_not_found", param=param)
        return voice

    def check_text(text: str, param: str) -> None:
        if len(text) > settings.max_input_chars:
            raise APIError(400, f"{param} is {len(text)} characters; the limit is {settings.max_input_chars}",
                           code="string_above_max_length", param=param)

    # ---- pages, health, metrics, models ------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        missing = await triton().not_ready(list(settings.required_models))
        if missing:
            return error_response(503, f"not ready: {', '.join(missing)}", "not_ready")
        return {"status": "ready", "models": list(settings.required_models)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(_key: str = Depends(caller)):
        names = [*settings.speech_models, *settings.chat_models]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "stepfun-ai"} for n in names]}

    # ---- speech ------------------------------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, key: str = Depends(caller)):
        start = time.perf_counter()
        lease = limiter.acquire(key)
        try:
            model = served_model(settings.speech_models, body.model, "speech")
            check_text(body.input, "input")
            if not body.input.strip():
                raise APIError(400, "input is empty", param="input")
            text = styled_text(body.input, body.instructions, body.speed)
            voice = await uploaded_voice(key, body.voice_id, "voice")
            tokens = capped(body.max_new_tokens, settings.max_new_tokens, settings.max_new_tokens_limit, "max_new_tokens")
            first, rest = await open_stream(model, tts_tensors(body, text, voice, tokens), _SPEECH_OUTPUTS)
        except BaseException:
            lease.release()
            raise
        rate = int(first["SAMPLE_RATE"].reshape(-1)[0])
        encoder = StreamEncoder(body.response_format, rate)

        async def encoded():
            timed, item = False, first
            while item is not None:
                data = encoder.encode(item["WAVEFORM"])
                if data:
                    if not timed:
                        metrics.first_audio.labels("/v1/audio/speech").observe(time.perf_counter() - start)
                        timed = True
                    yield data
                item = await anext(rest, None)
            if tail := encoder.finish():
                yield tail

        chunks = guarded(encoded(), lease, model, rest, encoder.close)
        headers = {"X-Sample-Rate": str(rate), "Cache-Control": "no-store"}
        if body.stream_format == "audio":
            return StreamingResponse(chunks, media_type=MEDIA_TYPES[body.response_format], headers=headers)

        async def events():
            audio_bytes = 0
            try:
                async for data in chunks:
                    audio_bytes += len(data)
                    yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            except (TritonError, TritonUnavailable) as exc:
                yield _sse({"type": "error", "error": {"message": str(exc), "type": "server_error"}})
                return
            yield _sse({"type": "speech.audio.done", "usage": {"input_characters": len(body.input), "audio_bytes": audio_bytes}})

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # ---- voices ------------------------------------------------------------------------------------------------
    @app.get("/v1/audio/voices")
    async def list_voices(key: str = Depends(caller)):
        uploaded = await asyncio.to_thread(store.list, key)
        presets = [{"id": name, "object": "audio.voice", "type": "preset", "name": name} for name in settings.preset_voices]
        return {"object": "list", "data": presets + [v.public() for v in uploaded]}

    @app.post("/v1/audio/voices", status_code=201)
    async def upload_voice(request: Request, key: str = Depends(caller)):
        lease = limiter.acquire(key)
        try:
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as exc:  # noqa: BLE001 - malformed multipart of any kind is the client's error
                if isinstance(exc, APIError):
                    raise
                raise APIError(400, f"expected multipart/form-data with file and transcript: {exc}") from exc
            upload = form.get("file") or form.get("audio_sample")
            transcript = str(form.get("transcript") or form.get("text") or "").strip()
            if not isinstance(upload, UploadFile):
                raise APIError(400, "multipart field 'file' (the audio file) is missing", param="file")
            if not transcript:
                raise APIError(400, "multipart field 'transcript' (what the recording says) is missing", param="transcript")
            check_text(transcript, "transcript")
            data = await upload.read(settings.max_upload_bytes + 1)
            wave, rate = await asyncio.to_thread(checked_audio, data, "file")
            name = str(form.get("name") or upload.filename or "voice")[:100]
            voice = await asyncio.to_thread(store.add, key, name, transcript, wave.mean(axis=0), rate)
        finally:
            lease.release()
        return voice.public()

    @app.delete("/v1/audio/voices/{voice_id}")
    async def delete_voice(voice_id: str, key: str = Depends(caller)):
        if not await asyncio.to_thread(store.delete, key, voice_id):
            raise APIError(404, f"voice {voice_id!r} does not exist", code="voice_not_found", param="voice_id")
        return {"id": voice_id, "object": "audio.voice.deleted", "deleted": True}

    # ---- chat --------------------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, key: str = Depends(caller)):
        start = time.perf_counter()
        lease = limiter.acquire(key)
        try:
            model = served_model(settings.chat_models, body.model, "chat")
            history, text, audio_file = split_messages(body.messages)
            check_text(text, "messages")
            voice = await uploaded_voice(key, body.voice, "audio.voice") if body.wants_audio else None
            fmt = body.audio_format if body.wants_audio else "pcm"
            audio = None if audio_file is None else await asyncio.to_thread(checked_audio, audio_file, "input_audio")
            max_tokens = capped(body.max_completion_tokens or body.max_tokens, settings.chat_max_tokens, settings.chat_max_tokens,
                                "max_completion_tokens")
            tensors = chat_tensors(body, history, text, audio, max_tokens, settings.chat_tts_max_new_tokens, voice)
            first, rest = await open_stream(model, tensors, _CHAT_OUTPUTS)
        except BaseException:
            lease.release()
            raise
        encoder: StreamEncoder | None = None  # made at the first audio chunk, which carries the rate

        async def parts():
            """("text" | "audio" | "transcript", value) in the order the served model sends them."""
            nonlocal encoder
            timed = False
            item = first
            while item is not None:
                if "TEXT_DELTA" in item:
                    yield "text", item["TEXT_DELTA"].reshape(-1)[0].decode()
                if "WAVEFORM" in item and body.wants_audio:
                    if encoder is None:
                        encoder = StreamEncoder(fmt, int(item["SAMPLE_RATE"].reshape(-1)[0]))
                    if data := encoder.encode(item["WAVEFORM"]):
                        if not timed:
                            metrics.first_audio.labels("/v1/chat/completions").observe(time.perf_counter() - start)
                            timed = True
                        yield "audio", data
                if "USER_TRANSCRIPT" in item:
                    yield "transcript", item["USER_TRANSCRIPT"].reshape(-1)[0].decode()
                item = await anext(rest, None)
            if encoder is not None and (tail := encoder.finish()):
                yield "audio", tail

        chunks = guarded(parts(), lease, model, rest, lambda: encoder is not None and encoder.close())
        ids = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": body.model}
        audio_id = "audio_" + secrets.token_hex(12)
        expires = ids["created"] + 3600
        if body.stream:
            return StreamingResponse(_chat_events(chunks, ids, audio_id, expires, body.wants_audio), media_type="text/event-stream")
        reply, transcript, audio_parts = [], "", []
        async for kind, value in chunks:
            if kind == "text":
                reply.append(value)
            elif kind == "audio":
                audio_parts.append(value)
            else:
                transcript = value
        message = {"role": "assistant", "content": "".join(reply)}
        if body.wants_audio:
            data = b"".join(audio_parts) or encode_whole(fmt, np.zeros(0, np.float32), 22050)
            message["audio"] = {"id": audio_id, "data": base64.b64encode(data).decode(), "expires_at": expires,
                                "transcript": message["content"]}
            message["content"] = None  # OpenAI: with audio output the text is the audio's transcript
        return JSONResponse({**ids, "object": "chat.completion",
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                             "step_audio": {"user_transcript": transcript}})

    mount_realtime(app, auth, limiter, triton)  # /v1/realtime: WebSocket voice sessions (docs/realtime.md)

    known = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=known)  # outermost: counts refusals too
    return app


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _chat_events(chunks, ids: dict, audio_id: str, expires: int, wants_audio: bool):
    """chat.completion.chunk events: role, then text (content, or audio.transcript with audio output) and audio
    deltas as they come, then the finish chunk (with the user's transcript) and [DONE]."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _sse({**ids, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    yield chunk({"role": "assistant", "content": None if wants_audio else ""})
    transcript = ""
    try:
        async for kind, value in chunks:
            if kind == "text":
                yield chunk({"audio": {"id": audio_id, "transcript": value, "expires_at": expires}} if wants_audio else {"content": value})
            elif kind == "audio":
                yield chunk({"audio": {"id": audio_id, "data": base64.b64encode(value).decode(), "expires_at": expires}})
            else:
                transcript = value
    except (TritonError, TritonUnavailable) as exc:
        yield _sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": "upstream_error"}})
        return
    yield chunk({}, "stop", step_audio={"user_transcript": transcript})
    yield "data: [DONE]\n\n"
