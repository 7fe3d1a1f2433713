"""``POST /v1/chat/completions``: one reply (text, optionally speech) as a JSON completion or as SSE chunks."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.audio import StreamEncoder, encode_whole
from gateway.chat import ChatRequest, chat_tensors, split_messages
from gateway.routes.deps import (
    Principal,
    State,
    capped,
    check_text,
    checked_audio,
    guarded,
    open_stream,
    served_model,
    sse,
    uploaded_voice,
)
from gateway.triton import TritonError, TritonUnavailable

ROUTE = "/v1/chat/completions"
OUTPUTS = ["TEXT_DELTA", "WAVEFORM", "SAMPLE_RATE", "USER_TRANSCRIPT"]
router = APIRouter()


@router.post(ROUTE)
async def chat(body: ChatRequest, state: State, principal: Principal):
    start = time.perf_counter()
    settings = state.settings
    lease = state.limiter.acquire(principal)
    try:
        model = served_model(settings.chat_models, body.model, "chat")
        history, text, audio_file = split_messages(body.messages)
        check_text(settings, text, "messages")
        voice = await uploaded_voice(state, principal, body.voice, "audio.voice") if body.wants_audio else None
        fmt = body.audio_format if body.wants_audio else "pcm"
        audio = None if audio_file is None else await asyncio.to_thread(checked_audio, settings, audio_file, "input_audio")
        max_tokens = capped(body.max_completion_tokens or body.max_tokens, settings.chat_max_tokens,
                            settings.chat_max_tokens, "max_completion_tokens")
        tensors = chat_tensors(body, history, text, audio, max_tokens, settings.chat_tts_max_new_tokens, voice,
                               speaker=state.speaker(body.voice))
        first, rest = await open_stream(state, model, tensors, OUTPUTS)
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
                        state.metrics.first_audio.labels(ROUTE).observe(time.perf_counter() - start)
                        timed = True
                    yield "audio", data
            if "USER_TRANSCRIPT" in item:
                yield "transcript", item["USER_TRANSCRIPT"].reshape(-1)[0].decode()
            item = await anext(rest, None)
        if encoder is not None and (tail := encoder.finish()):
            yield "audio", tail

    chunks = guarded(state, parts(), lease, model, rest, lambda: encoder is not None and encoder.close())
    ids = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": body.model}
    audio_id = "audio_" + secrets.token_hex(12)
    expires = ids["created"] + 3600
    if body.stream:
        return StreamingResponse(_chat_events(chunks, ids, audio_id, expires, body.wants_audio),
                                 media_type="text/event-stream")
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
        data = b"".join(audio_parts)
        if not data and encoder is not None:  # audio that came out empty: still a well-formed file at its rate
            data = encode_whole(fmt, np.zeros(0, np.float32), encoder.sample_rate)
        message["audio"] = {"id": audio_id, "data": base64.b64encode(data).decode(), "expires_at": expires,
                            "transcript": message["content"]}
        message["content"] = None  # OpenAI: with audio output the text is the audio's transcript
    return JSONResponse({**ids, "object": "chat.completion",
                         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                         "step_audio": {"user_transcript": transcript}})


async def _chat_events(chunks, ids: dict, audio_id: str, expires: int, wants_audio: bool):
    """chat.completion.chunk events: role, then text (content, or audio.transcript with audio output) and audio
    deltas as they come, then the finish chunk (with the user's transcript) and [DONE]."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return sse({**ids, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    yield chunk({"role": "assistant", "content": None if wants_audio else ""})
    transcript = ""
    try:
        async for kind, value in chunks:
            if kind == "text":
                yield chunk({"audio": {"id": audio_id, "transcript": value, "expires_at": expires}} if wants_audio
                            else {"content": value})
            elif kind == "audio":
                yield chunk({"audio": {"id": audio_id, "data": base64.b64encode(value).decode(), "expires_at": expires}})
            else:
                transcript = value
    except (TritonError, TritonUnavailable) as exc:
        yield sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": "upstream_error"}})
        return
    yield chunk({}, "stop", step_audio={"user_transcript": transcript})
    yield "data: [DONE]\n\n"
