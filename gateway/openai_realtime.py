"""The OpenAI Realtime protocol on ``/v1/realtime`` (docs/realtime.md#the-openai-realtime-protocol).

A connection speaks it when it names a ``model`` in the query or sends ``OpenAI-Beta: realtime=...`` (both of the
``openai`` SDK's realtime clients do); other connections keep the project's own events (``gateway.realtime``).
``OpenAIBridge`` is the same socket ⇄ Triton sequence bridge with a protocol layer on each side:

- client events are parsed with pydantic models (the beta shapes the SDK's ``beta.realtime`` client sends, and the
  GA session shape) and become the served session's inputs: START options, audio chunks and one ``CONTROL`` JSON
  message per request (``stepaudio/realtime/turns.py`` on the server: manual and typed turns, response.create,
  response.cancel, truncate);
- the session's events become the protocol's, in its order, with item ids, and audio resampled to 24 kHz PCM16
  (soxr, streamed per response). Events the protocol has no name for leave unchanged (documented extensions).

Input audio needs no resampling here: the session takes any rate 8–48 kHz, 24 kHz included.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import soxr
from fastapi import WebSocket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.realtime import Bridge, RealtimeLimits, pcm16_to_float

log = logging.getLogger("gateway.openai_realtime")
PROTOCOL_RATE = 24000  # OpenAI's pcm16: 24 kHz mono little-endian
MAX_TEXT_CHARS = 4000  # one typed turn (the session refuses longer ones too)
# Session fields the protocol defines that this server accepts and ignores (a warning names them).
IGNORED_SESSION_FIELDS = {"tools", "tool_choice", "temperature", "input_audio_noise_reduction", "speed", "tracing",
                          "include", "prompt", "truncation", "client_secret", "expires_at", "id", "object", "model",
                          "type"}


def wants_openai(ws: WebSocket) -> bool:
    """The SDK's clients name the model in the query; the beta client also sends ``OpenAI-Beta: realtime=v1``."""
    return "model" in ws.query_params or "realtime" in ws.headers.get("openai-beta", "")


def bridge_for(ws: WebSocket, triton, limits: RealtimeLimits) -> Bridge:
    if not wants_openai(ws):
        return Bridge(ws, triton, limits)
    dialect = "beta" if "realtime" in ws.headers.get("openai-beta", "") else "ga"
    return OpenAIBridge(ws, triton, limits, dialect, ws.query_params.get("model", "step-audio"))


def _event_id() -> str:
    return "event_" + secrets.token_hex(8)


def _item_id() -> str:
    return "item_" + secrets.token_hex(8)


# ---- client events -----------------------------------------------------------------------------------------------
class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    event_id: str | None = Field(default=None, max_length=200)


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: dict[str, Any]


class AudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = Field(default=None, max_length=64)
    type: str = "message"
    role: str | None = None
    content: list[ContentPart] = Field(default_factory=list, max_length=16)


class ItemCreate(_Event):
    type: Literal["conversation.item.create"]
    previous_item_id: str | None = None
    item: Item


class ItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str = Field(max_length=64)
    content_index: int = 0
    audio_end_ms: int = Field(ge=0, le=3_600_000)


class ResponseOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    instructions: str | None = Field(default=None, max_length=8000)
    modalities: list[str] | None = None  # beta
    output_modalities: list[str] | None = None  # GA


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseOptions = Field(default_factory=ResponseOptions)


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


class SessionClose(_Event):  # an extension: ends the sequence, as closing the socket does
    type: Literal["session.close"]


ClientEvent = (SessionUpdate | AudioAppend | AudioCommit | AudioClear | ItemCreate | ItemDelete | ItemTruncate
               | ResponseCreate | ResponseCancel | SessionClose)
CLIENT_EVENT = TypeAdapter(ClientEvent)
CLIENT_TYPES = sorted(m.model_fields["type"].annotation.__args__[0] for m in ClientEvent.__args__)


class ProtocolError(ValueError):
    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


# ---- the session's settings ---------------------------------------------------------------------------------------
DEFAULT_TURN_DETECTION = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 100,
                          "silence_duration_ms": 600, "create_response": True, "interrupt_response": True}


@dataclass
class ProtocolSession:
    """What ``session.updated`` reports; START options live in the bridge's ``SessionOptions``."""

    model: str
    instructions: str = ""
    voice: str | None = None
    turn_detection: dict | None = field(default_factory=lambda: dict(DEFAULT_TURN_DETECTION))
    modalities: list[str] = field(default_factory=lambda: ["text", "audio"])
    input_audio_transcription: dict | None = None
    max_response_output_tokens: int | str = "inf"

    def beta(self, input_rate: int) -> dict:
        return {"object": "realtime.session", "model": self.model, "modalities": self.modalities,
                "instructions": self.instructions, "voice": self.voice, "input_audio_format": "pcm16",
                "output_audio_format": "pcm16", "input_audio_transcription": self.input_audio_transcription,
                "turn_detection": self.turn_detection, "tools": [], "tool_choice": "none",
                "max_response_output_tokens": self.max_response_output_tokens, "sample_rate": input_rate}

    def ga(self, input_rate: int) -> dict:
        pcm = {"type": "audio/pcm", "rate": PROTOCOL_RATE}
        return {"type": "realtime", "object": "realtime.session", "model": self.model,
                "output_modalities": ["audio" if "audio" in self.modalities else "text"],
                "instructions": self.instructions, "tools": [], "tool_choice": "none",
                "max_output_tokens": self.max_response_output_tokens,
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": input_rate},
                                    "turn_detection": self.turn_detection,
                                    "transcription": self.input_audio_transcription},
                          "output": {"format": pcm, "voice": self.voice}}}


def flatten_session(session: dict) -> dict:
    """The GA shape (``audio.input/output``, ``output_modalities``, ``max_output_tokens``) as the beta fields."""
    flat = dict(session)
    audio = flat.pop("audio", None)
    if isinstance(audio, dict):
        source, sink = audio.get("input") or {}, audio.get("output") or {}
        if not isinstance(source, dict) or not isinstance(sink, dict):
            raise ProtocolError("session.audio.input and .output must be objects", param="session.audio")
        for name, value in (("turn_detection", source.get("turn_detection", ...)),
                            ("input_audio_transcription", source.get("transcription", ...)),
                            ("voice", sink.get("voice", ...))):
            if value is not ...:
                flat[name] = value
        for key, fmt in (("input_audio_format", source.get("format")), ("output_audio_format", sink.get("format"))):
            if isinstance(fmt, dict):
                if fmt.get("type", "audio/pcm") != "audio/pcm":
                    raise ProtocolError(f"only audio/pcm is served, not {fmt.get('type')!r}", param=key)
                flat[key] = "pcm16"
                if key == "input_audio_format" and "rate" in fmt:
                    flat["sample_rate"] = fmt["rate"]
                if key == "output_audio_format" and fmt.get("rate", PROTOCOL_RATE) != PROTOCOL_RATE:
                    raise ProtocolError("output audio is 24000 Hz PCM16", param="session.audio.output.format")
    if "output_modalities" in flat:
        flat["modalities"] = flat.pop("output_modalities")
    if "max_output_tokens" in flat:
        flat["max_response_output_tokens"] = flat.pop("max_output_tokens")
    return flat


# ---- per-response output state -----------------------------------------------------------------------------------
@dataclass
class ResponseState:
    id: str
    item_id: str
    user_item_id: str | None
    audio: bool
    transcript: str = ""
    resampler: soxr.ResampleStream | None = None
    source_rate: int = 0
    audio_ms: float = 0.0  # 24 kHz audio sent, for truncate's bound


class OpenAIBridge(Bridge):
    """``gateway.realtime.Bridge`` with the OpenAI protocol on both sides (see the module docstring)."""

    def __init__(self, ws: WebSocket, triton, limits: RealtimeLimits, dialect: str, model: str):
        super().__init__(ws, triton, limits)
        self.dialect = dialect
        self.options.sample_rate = PROTOCOL_RATE
        self.session = ProtocolSession(model)
        self.start_control: dict = {"type": "session"}  # the served turn detection unless the client sets one
        self.last_item_id: str | None = None
        self.speech_item_id: str | None = None  # the user item the current speech becomes
        self.user_item_id: str | None = None  # the latest committed user input, answered by the next response
        self.text_item_ids: list[str] = []  # ids the client chose for its typed items, in order
        self.responses: dict[str, ResponseState] = {}
        self.by_item: dict[str, str] = {}  # assistant item id → response id (truncate)
        self.pending_speak: list[bool] = []  # modalities of the response.create events not yet answered

    # ---- output ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self._emit({"type": "session.created", "session": self._session_view()})
        await super().run()

    def _session_view(self) -> dict:
        view = self.session.beta if self.dialect == "beta" else self.session.ga
        return view(self.options.sample_rate)

    async def _emit(self, event: dict) -> None:
        await super()._send({"event_id": _event_id(), **event})

    def _name(self, beta_name: str) -> str:
        if self.dialect == "beta":
            return beta_name
        return {"response.audio.delta": "response.output_audio.delta",
                "response.audio.done": "response.output_audio.done",
                "response.audio_transcript.delta": "response.output_audio_transcript.delta",
                "response.audio_transcript.done": "response.output_audio_transcript.done",
                "response.text.delta": "response.output_text.delta",
                "response.text.done": "response.output_text.done",
                "conversation.item.created": "conversation.item.added"}.get(beta_name, beta_name)

    async def _send(self, event: dict) -> None:
        """A session event (or the bridge's own error) → the protocol's events."""
        for out in self._translate(event):
            out["type"] = self._name(out["type"])
            await self._emit(out)

    def _new_user_item(self, content: list[dict], item_id: str | None = None) -> list[dict]:
        item_id = item_id or _item_id()
        previous, self.last_item_id, self.user_item_id = self.last_item_id, item_id, item_id
        return [{"type": "conversation.item.created", "previous_item_id": previous,
                 "item": {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                          "status": "completed", "content": content}}]

    def _translate(self, event: dict) -> list[dict]:
        kind = event.get("type")
        if kind == "session.created":
            return []  # sent at connect, before the sequence started
        if kind == "input_audio_buffer.speech_started":
            self.speech_item_id = _item_id()
            return [{**event, "item_id": self.speech_item_id}]
        if kind == "input_audio_buffer.speech_stopped":
            item_id, self.speech_item_id = self.speech_item_id or _item_id(), None
            previous = self.last_item_id
            return ([{"type": kind, "audio_end_ms": event.get("audio_end_ms"), "item_id": item_id},
                     {"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id}]
                    + self._new_user_item([{"type": "input_audio", "transcript": None}], item_id))
        if kind == "input_audio_buffer.committed":  # a manual commit
            item_id, previous = _item_id(), self.last_item_id
            return ([{"type": kind, "previous_item_id": previous, "item_id": item_id}]
                    + self._new_user_item([{"type": "input_audio", "transcript": None}], item_id))
        if kind == "input_text.committed":
            item_id = self.text_item_ids.pop(0) if self.text_item_ids else None
            return self._new_user_item([{"type": "input_text", "text": event.get("text", "")}], item_id)
        if kind == "response.created":
            return self._created(event["response"])
        if kind == "response.audio_transcript.delta":
            state = self.responses.get(event.get("response_id"))
            if state is None:
                return []
            state.transcript += event.get("delta", "")
            name = "response.audio_transcript.delta" if state.audio else "response.text.delta"
            return [{"type": name, **self._where(state), "delta": event.get("delta", "")}]
        if kind == "response.audio.delta":
            state = self.responses.get(event.get("response_id"))
            return [] if state is None else self._audio(state, event)
        if kind == "conversation.item.input_audio_transcription.completed":
            state = self.responses.get(event.get("response_id"))
            item_id = state.user_item_id if state is not None else None
            return [{"type": kind, "item_id": item_id, "content_index": 0, "transcript": event.get("transcript", "")}]
        if kind == "response.done":
            return self._done(event["response"]["id"], event["response"].get("status", "completed"),
                              event["response"].get("usage") or {})
        if kind == "response.cancelled":
            reason = "turn_detected" if event.get("reason") == "barge_in" else "client_cancelled"
            return self._done(event.get("response_id"), "cancelled", {}, reason)
        if kind == "conversation.item.truncated":
            state = self.responses.get(event.get("response_id"))
            # ``transcript`` (an extension): the part the history keeps
            return [] if state is None else [{"type": kind, "item_id": state.item_id, "content_index": 0,
                                              "audio_end_ms": event.get("audio_end_ms", 0),
                                              "transcript": event.get("transcript", "")}]
        return [event]  # error, input_audio_buffer.cleared, session.closed, and any extension: unchanged

    def _where(self, state: ResponseState) -> dict:
        return {"response_id": state.id, "item_id": state.item_id, "output_index": 0, "content_index": 0}

    def _created(self, response: dict) -> list[dict]:
        speak = self.pending_speak.pop(0) if self.pending_speak else "audio" in self.session.modalities
        state = ResponseState(response["id"], _item_id(), self.user_item_id, speak)
        self.responses[state.id], self.by_item[state.item_id] = state, state.id
        for old in list(self.responses)[:-16]:  # a long session keeps the latest only
            self.by_item.pop(self.responses.pop(old).item_id, None)
        previous, self.last_item_id = self.last_item_id, state.item_id
        item = {"id": state.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        part = {"type": "audio", "transcript": ""} if state.audio else {"type": "text", "text": ""}
        return [{"type": "response.created", "response": {
                    "object": "realtime.response", "id": state.id, "status": "in_progress", "status_details": None,
                    "output": [], "usage": None, "metadata": {"speculative": bool(response.get("speculative"))}}},
                {"type": "response.output_item.added", "response_id": state.id, "output_index": 0, "item": item},
                {"type": "conversation.item.created", "previous_item_id": previous, "item": item},
                {"type": "response.content_part.added", **self._where(state), "part": part}]

    def _audio(self, state: ResponseState, event: dict) -> list[dict]:
        rate = int(event.get("sample_rate", PROTOCOL_RATE))
        wave = pcm16_to_float(event.get("delta", ""))
        if state.resampler is None or state.source_rate != rate:
            state.resampler, state.source_rate = soxr.ResampleStream(rate, PROTOCOL_RATE, 1, dtype="float32"), rate
        return self._audio_delta(state, state.resampler.resample_chunk(wave))

    def _audio_delta(self, state: ResponseState, wave: np.ndarray) -> list[dict]:
        if wave.size == 0:
            return []
        state.audio_ms += wave.size * 1000 / PROTOCOL_RATE
        pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return [{"type": "response.audio.delta", **self._where(state), "delta": base64.b64encode(pcm).decode()}]

    def _done(self, response_id: str | None, status: str, usage: dict, reason: str | None = None) -> list[dict]:
        state = self.responses.get(response_id)
        if state is None:
            return []
        events = []
        if state.resampler is not None:  # the resampler's tail: the last few ms of the reply
            events += self._audio_delta(state, state.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            state.resampler = None
        where = self._where(state)
        if state.audio:
            events += [{"type": "response.audio.done", **where},
                       {"type": "response.audio_transcript.done", **where, "transcript": state.transcript}]
            part = {"type": "audio", "transcript": state.transcript}
        else:
            events.append({"type": "response.text.done", **where, "text": state.transcript})
            part = {"type": "text", "text": state.transcript}
        item = {"id": state.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "completed" if status == "completed" else "incomplete", "content": [part]}
        text_out, audio_in = int(usage.get("output_text_tokens", 0)), int(usage.get("input_audio_tokens", 0))
        details = {"type": status, "reason": reason} if reason else None
        if status == "failed":
            details = {"type": "failed", "error": None}
        events += [{"type": "response.content_part.done", **where, "part": part},
                   {"type": "response.output_item.done", "response_id": state.id, "output_index": 0, "item": item},
                   {"type": "response.done", "response": {
                       "object": "realtime.response", "id": state.id, "status": status, "status_details": details,
                       "output": [item],
                       "usage": {"total_tokens": text_out + audio_in, "input_tokens": audio_in,
                                 "output_tokens": text_out,
                                 "input_token_details": {"audio_tokens": audio_in, "text_tokens": 0,
                                                         "cached_tokens": 0},
                                 "output_token_details": {"text_tokens": text_out, "audio_tokens": 0}},
                       "metadata": {"output_audio_seconds": usage.get("output_audio_seconds")}}}]
        return events

    # ---- input ----------------------------------------------------------------------------------------------
    def _request(self, audio: np.ndarray, end: bool = False, control: dict | None = None) -> dict:
        """One control message per request; the START carries the session's settings so far (``_control`` sends
        the START on its own first)."""
        import tritonclient.grpc as grpcclient

        if not self.started:
            control = self.start_control
        request = super()._request(audio, end)
        # tritonclient.grpc.aio refuses Triton's reserved "triton_" parameters (InferenceServerException in the
        # request iterator cancels the whole stream); left out until gateway.realtime sends it another way.
        parameters = {k: v for k, v in (request.get("parameters") or {}).items() if not k.startswith("triton_")}
        if parameters:
            request["parameters"] = parameters
        else:
            request.pop("parameters", None)
        if control is not None:
            value = np.array([[json.dumps(control).encode()]], dtype=np.object_)
            tensor = grpcclient.InferInput("CONTROL", list(value.shape), "BYTES")
            tensor.set_data_from_numpy(value)
            request["inputs"].append(tensor)
        return request

    async def _control(self, control: dict) -> None:
        """A control message on its own request (no audio); the first request STARTs with the settings."""
        if not self.started:
            await self.requests.put(self._request(np.zeros(0, np.float32)))
        await self.requests.put(self._request(np.zeros(0, np.float32), control=control))

    async def _handle(self, raw) -> None:
        event_id = raw.get("event_id") if isinstance(raw, dict) else None
        try:
            event = CLIENT_EVENT.validate_python(raw)
        except ValidationError as exc:
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind not in CLIENT_TYPES:
                await self._error(f"unknown event type {kind!r}; this server accepts {CLIENT_TYPES}",
                                  "invalid_event", event_id)
            else:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"][1:])
                await self._error(f"{kind}: {where}: {first['msg']}", "invalid_value", event_id, where or None)
            return
        try:
            await self._dispatch(event)
        except ProtocolError as exc:
            await self._error(str(exc), exc.code, event_id, exc.param)
        except ValueError as exc:  # the bridge's own checks (audio, pace)
            await self._error(str(exc), "invalid_value", event_id)

    async def _error(self, message: str, code: str, event_id: str | None, param: str | None = None) -> None:
        await self._emit({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                                     "message": message, "param": param, "event_id": event_id}})

    async def _dispatch(self, event) -> None:
        if isinstance(event, SessionUpdate):
            await self._session_update(event.session)
        elif isinstance(event, AudioAppend):
            await super()._handle({"type": "input_audio_buffer.append", "audio": event.audio})
        elif isinstance(event, AudioCommit):
            await self._control({"type": "commit"})
        elif isinstance(event, AudioClear):
            await self._control({"type": "clear"})
        elif isinstance(event, ItemCreate):
            await self._item_create(event)
        elif isinstance(event, ItemDelete):
            raise ProtocolError("conversation.item.delete is not supported (the history is the server's; see "
                                "docs/realtime.md)", "unsupported_event")
        elif isinstance(event, ItemTruncate):
            response_id = self.by_item.get(event.item_id)
            if response_id is None:
                raise ProtocolError(f"no assistant item {event.item_id!r} to truncate", "item_truncate_invalid_item_id",
                                    "item_id")
            await self._control({"type": "truncate", "response_id": response_id, "audio_end_ms": event.audio_end_ms})
        elif isinstance(event, ResponseCreate):
            modalities = event.response.output_modalities or event.response.modalities or self.session.modalities
            speak = "audio" in modalities
            self.pending_speak.append(speak)
            message = {"type": "response.create", "audio": speak}
            if event.response.instructions is not None:
                message["instructions"] = event.response.instructions
            await self._control(message)
        elif isinstance(event, ResponseCancel):
            await self._control({"type": "response.cancel"})
        elif isinstance(event, SessionClose):
            await super()._handle({"type": "session.close"})

    async def _item_create(self, event: ItemCreate) -> None:
        item = event.item
        if item.type != "message" or item.role != "user":
            raise ProtocolError("only user message items can be created (function calls are not supported: the "
                                "open checkpoint's tool-call format is not published)", "unsupported_item", "item")
        texts = [part.text for part in item.content if part.type in ("input_text", "text") and part.text]
        if len(texts) != len(item.content) or not texts:
            raise ProtocolError("a user item carries input_text parts; send audio with input_audio_buffer.append",
                                "unsupported_content", "item.content")
        if item.id is not None:
            self.text_item_ids.append(item.id)
        await self._control({"type": "text", "text": "\n".join(texts)})

    async def _session_update(self, update: dict) -> None:
        flat = flatten_session(update)
        warnings = sorted(set(flat) & IGNORED_SESSION_FIELDS - {"type", "model", "object"})
        known = {"modalities", "instructions", "voice", "input_audio_format", "output_audio_format",
                 "input_audio_transcription", "turn_detection", "max_response_output_tokens",
                 "sample_rate", "seed", "speculation", "max_speech_tokens"}
        warnings += sorted(set(flat) - known - IGNORED_SESSION_FIELDS)
        for name in ("input_audio_format", "output_audio_format"):
            if flat.get(name, "pcm16") != "pcm16":
                raise ProtocolError(f"{name} must be pcm16 (24 kHz; sample_rate sets another input rate)", param=name)
        start_fields = {"sample_rate", "seed", "speculation", "max_response_output_tokens", "max_speech_tokens"}
        if self.started:  # fixed once the sequence started: say so, keep the rest of the update
            late = sorted(f for f in start_fields & set(flat)
                          if f != "max_response_output_tokens" or flat[f] != self.session.max_response_output_tokens)
            warnings += [f"{f} (fixed once audio started)" for f in late]
        options = copy.copy(self.options)
        if not self.started:
            start = {f: flat[f] for f in start_fields if f in flat}
            cap = self.limits.max_new_tokens
            tokens = start.pop("max_response_output_tokens", "inf")
            if tokens != "inf" and not (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 1):
                raise ProtocolError("max_response_output_tokens must be a positive integer or 'inf'",
                                    param="max_response_output_tokens")
            if tokens != "inf":  # OpenAI's limit is an upper bound: the served cap applies
                start["max_response_output_tokens"] = min(tokens, cap)
            if "voice" in flat and flat["voice"] is not None:
                start["voice"] = flat["voice"]
            options.update(start)
        control: dict = {"type": "session"}
        if "turn_detection" in flat:
            detection = flat["turn_detection"]
            if detection is not None and (not isinstance(detection, dict)
                                          or detection.get("type", "server_vad") != "server_vad"):
                raise ProtocolError("turn_detection must be null or server_vad (semantic_vad is not served)",
                                    param="session.turn_detection")
            if detection is not None:
                detection = {**DEFAULT_TURN_DETECTION, **{k: v for k, v in detection.items() if v is not None}}
                for extra in sorted(set(detection) - set(DEFAULT_TURN_DETECTION)):
                    warnings.append(f"turn_detection.{extra}")
                    del detection[extra]
            control["turn_detection"] = detection
        if "instructions" in flat:
            if not isinstance(flat["instructions"], str) or len(flat["instructions"]) > 8000:
                raise ProtocolError("instructions must be a string of at most 8000 characters", param="instructions")
            control["instructions"] = flat["instructions"]
        if "voice" in flat and flat["voice"] is not None:
            if not isinstance(flat["voice"], str) or not 0 < len(flat["voice"]) <= 100:
                raise ProtocolError("voice must be a voice name", param="voice")
            control["speaker"] = flat["voice"]
        if "modalities" in flat:
            modalities = flat["modalities"]
            if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"} or not modalities:
                raise ProtocolError("modalities must be a list of 'text' and 'audio'", param="modalities")
        # Every check passed: the update applies as a whole.
        self.options = options
        for name in ("instructions", "voice", "input_audio_transcription", "modalities", "max_response_output_tokens"):
            if name in flat:
                setattr(self.session, name, flat[name])
        if "turn_detection" in control:
            self.session.turn_detection = control["turn_detection"]
        if self.started:
            if len(control) > 1:  # something for the served session to change
                await self._control(control)
        else:
            self.start_control = {**self.start_control, **control}
        await self._emit({"type": "session.updated", "session": self._session_view()})
        if warnings:
            await self._emit({"type": "warning", "warning": {
                "code": "unsupported_fields", "fields": warnings,
                "message": f"ignored: {', '.join(warnings)} (docs/realtime.md lists what is served)"}})
