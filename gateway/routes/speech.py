"""``POST /v1/audio/speech``: audio bytes as they are generated, or SSE events (``stream_format: "sse"``)."""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from gateway.audio import MEDIA_TYPES, StreamEncoder
from gateway.errors import APIError
from gateway.routes.deps import (
    Principal,
    State,
    capped,
    check_text,
    guarded,
    open_stream,
    served_model,
    sse,
    uploaded_voice,
)
from gateway.speech import SpeechRequest, styled_text, tts_tensors
from gateway.triton import TritonError, TritonUnavailable

ROUTE = "/v1/audio/speech"
OUTPUTS = ["WAVEFORM", "SAMPLE_RATE"]
router = APIRouter()


@router.post(ROUTE)
async def speech(body: SpeechRequest, state: State, principal: Principal):
    start = time.perf_counter()
    settings = state.settings
    lease = state.limiter.acquire(principal)
    try:
        model = served_model(settings.speech_models, body.model, "speech")
        check_text(settings, body.input, "input")
        if not body.input.strip():
            raise APIError(400, "input is empty", param="input")
        text = styled_text(body.input, body.instructions, body.speed)
        voice = await uploaded_voice(state, principal, body.voice_id, "voice")
        tokens = capped(body.max_new_tokens, settings.max_new_tokens, settings.max_new_tokens_limit, "max_new_tokens")
        tensors = tts_tensors(body, text, voice, tokens, speaker=state.speaker(body.voice_id))
        first, rest = await open_stream(state, model, tensors, OUTPUTS)
    except BaseException:
        lease.release()
        raise
    rate = int(first["SAMPLE_RATE"].reshape(-1)[0])  # the served decoder's rate, whatever it is
    encoder = StreamEncoder(body.response_format, rate)

    async def encoded():
        timed, item = False, first
        while item is not None:
            data = encoder.encode(item["WAVEFORM"])
            if data:
                if not timed:
                    state.metrics.first_audio.labels(ROUTE).observe(time.perf_counter() - start)
                    timed = True
                yield data
            item = await anext(rest, None)
        if tail := encoder.finish():
            yield tail

    chunks = guarded(state, encoded(), lease, model, rest, encoder.close)
    headers = {"X-Sample-Rate": str(rate), "Cache-Control": "no-store"}
    if body.stream_format == "audio":
        return StreamingResponse(chunks, media_type=MEDIA_TYPES[body.response_format], headers=headers)

    async def events():
        audio_bytes = 0
        try:
            async for data in chunks:
                audio_bytes += len(data)
                yield sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        except (TritonError, TritonUnavailable) as exc:
            yield sse({"type": "error", "error": {"message": str(exc), "type": "server_error"}})
            return
        yield sse({"type": "speech.audio.done", "usage": {"input_characters": len(body.input), "audio_bytes": audio_bytes}})

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
