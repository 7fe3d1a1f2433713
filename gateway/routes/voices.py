"""``GET/POST/DELETE /v1/audio/voices``: the presets the server speaks and the caller's uploaded voices (stored in
``gateway/voices.py``, owned by the caller's principal, so all keys of one name see the same voices)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from gateway.errors import APIError
from gateway.routes.deps import Principal, State, check_text, checked_audio

router = APIRouter()


@router.get("/v1/audio/voices")
async def list_voices(state: State, principal: Principal):
    uploaded = await asyncio.to_thread(state.store.list, principal)
    presets = [{"id": name, "object": "audio.voice", "type": "preset", "name": name}
               for name in state.settings.preset_voices]
    aliases = [{"id": alias, "object": "audio.voice", "type": "alias", "name": alias, "preset": preset}
               for alias, preset in state.voice_aliases.items()]
    return {"object": "list", "data": presets + aliases + [v.public() for v in uploaded]}


@router.post("/v1/audio/voices", status_code=201)
async def upload_voice(request: Request, state: State, principal: Principal):
    settings = state.settings
    lease = state.limiter.acquire(principal)
    try:
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # noqa: BLE001 - malformed multipart of any kind is the client's error
            if isinstance(exc, APIError):
                raise
            raise APIError(400, f"expected multipart/form-data with file and transcript: {exc}") from exc
        upload = form.get("file") or form.get("audio_sample")
        transcript = form.get("transcript") or form.get("text") or ""
        if not isinstance(upload, UploadFile):
            raise APIError(400, "multipart field 'file' (the audio file) is missing", param="file")
        if not isinstance(transcript, str) or not transcript.strip():
            raise APIError(400, "multipart field 'transcript' (what the recording says) is missing", param="transcript")
        transcript = transcript.strip()
        check_text(settings, transcript, "transcript")
        data = await upload.read(settings.max_upload_bytes + 1)
        wave, rate = await asyncio.to_thread(checked_audio, settings, data, "file")
        name = form.get("name")
        name = (name if isinstance(name, str) and name else upload.filename or "voice")[:100]
        voice = await asyncio.to_thread(state.store.add, principal, name, transcript, wave.mean(axis=0), rate)
    finally:
        lease.release()
    return voice.public()


@router.delete("/v1/audio/voices/{voice_id}")
async def delete_voice(voice_id: str, state: State, principal: Principal):
    if not await asyncio.to_thread(state.store.delete, principal, voice_id):
        raise APIError(404, f"voice {voice_id!r} does not exist", code="voice_not_found", param="voice_id")
    return {"id": voice_id, "object": "audio.voice.deleted", "deleted": True}
