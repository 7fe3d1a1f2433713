"""``/v1/realtime`` through the official ``openai`` SDK's realtime client (``client.beta.realtime.connect``),
unmodified, on real speech (the shipped English clip, resampled to the protocol's 24 kHz with soxr)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import soxr

from tests.gateway.helpers import API_KEY
from tests.realtime.scripted import build

live = pytest.mark.server  # the offline tests of the protocol layer at the end need no server
RATE = 24000
CHUNK = int(0.1 * RATE)
# Small replies: the tiny random models speak noise; turn-taking and the protocol are what is tested.
SMALL = {"seed": 7, "max_response_output_tokens": 8, "max_speech_tokens": 40}
REPLY_EVENTS = ["response.created", "response.output_item.added", "conversation.item.created",
                "response.content_part.added"]
DONE_EVENTS = ["response.audio.done", "response.audio_transcript.done", "response.content_part.done",
               "response.output_item.done", "response.done"]


def _speech(pieces: list) -> tuple[np.ndarray, list]:
    session = build(16000, pieces)
    return soxr.resample(session.wave, 16000, RATE).astype(np.float32), session.speech


def _pcm16(wave: np.ndarray) -> str:
    return base64.b64encode((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()).decode()


class Conversation:
    """The SDK connection, its events as they arrive, and a microphone that streams audio or silence."""

    def __init__(self, connection):
        self.connection, self.events = connection, []
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for event in self.connection:
            self.events.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of(self, kind: str) -> list:
        return [e for e in self.events if e.type == kind]

    async def stream(self, wave: np.ndarray, speed: float = 3.0) -> None:
        for i in range(0, wave.shape[0], CHUNK):
            await self.connection.input_audio_buffer.append(audio=_pcm16(wave[i:i + CHUNK]))
            await asyncio.sleep(CHUNK / RATE / speed)

    async def until(self, predicate, seconds: float = 90.0):
        """Stream silence (a live microphone) until an event matches."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [e for e in self.events if predicate(e)]
            if found:
                return found[0]
            await self.stream(np.zeros(CHUNK, np.float32), speed=1.0)
        raise AssertionError(f"no matching event in {seconds} s; got {self.types()}")


def _run(gateway, body):
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(api_key=API_KEY, base_url=gateway.url + "/v1",
                             websocket_base_url=gateway.url.replace("http://", "ws://") + "/v1")
        async with client.beta.realtime.connect(model="step-audio") as connection:
            conversation = Conversation(connection)
            try:
                await body(conversation)
            finally:
                conversation.reader.cancel()
        return conversation

    return asyncio.run(main())


def _response_events(conversation, response_id: str) -> list[str]:
    own = []
    for e in conversation.events:
        rid = getattr(e, "response_id", None) or getattr(getattr(e, "response", None), "id", None)
        if rid == response_id:
            own.append(e.type)
    return own


def _audio(conversation, response_id: str) -> np.ndarray:
    parts = [np.frombuffer(base64.b64decode(e.delta), "<i2") for e in conversation.of("response.audio.delta")
             if e.response_id == response_id]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


@live
def test_a_server_vad_turn_in_the_protocols_order_with_24khz_audio(gateway):
    wave, speech = _speech([0.4, "speech", 0.9])

    async def body(c: Conversation):
        await c.connection.session.update(session={
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 600,
                               "prefix_padding_ms": 100}, "instructions": "Answer briefly.",
            "tools": [], "no_such_field": 1, **SMALL})
        await c.connection.send({"type": "no.such.event"})  # a protocol error; the session goes on
        await c.stream(wave)
        await c.until(lambda e: e.type == "response.done", 400)

    c = _run(gateway, body)
    kinds = c.types()
    assert kinds[:4] == ["session.created", "session.updated", "warning", "error"]
    assert c.events[1].session.turn_detection.silence_duration_ms == 600
    warned = c.events[2].warning["fields"]
    assert "no_such_field" in warned and "tools" in warned and "seed" not in warned
    assert c.events[3].error.code == "invalid_event"
    main = [k for k in kinds if k.startswith("input_audio_buffer") or k in REPLY_EVENTS[:1] + DONE_EVENTS[-1:]
            or k == "conversation.item.created"]
    assert main == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                    "input_audio_buffer.committed", "conversation.item.created", "response.created",
                    "conversation.item.created", "response.done"]
    started, stopped = c.of("input_audio_buffer.speech_started")[0], c.of("input_audio_buffer.speech_stopped")[0]
    (start, end), = speech
    assert abs(started.audio_start_ms / 1000 - start) <= 0.1 and abs(stopped.audio_end_ms / 1000 - end) <= 0.1
    committed = c.of("input_audio_buffer.committed")[0]
    user_item, bot_item = (e.item for e in c.of("conversation.item.created"))
    assert started.item_id == stopped.item_id == committed.item_id == user_item.id and user_item.role == "user"
    assert bot_item.role == "assistant"
    done = c.of("response.done")[0].response
    own = _response_events(c, done.id)
    assert own[:4] == REPLY_EVENTS[:2] + REPLY_EVENTS[3:] or own[:3] == ["response.created",
                                                                         "response.output_item.added",
                                                                         "response.content_part.added"]
    assert own[-5:] == DONE_EVENTS
    assert set(own[3:-5]) <= {"response.audio.delta", "response.audio_transcript.delta"}
    assert done.status == "completed" and done.usage.input_tokens > 0 and done.output[0].id == bot_item.id
    transcript = "".join(e.delta for e in c.of("response.audio_transcript.delta"))
    assert c.of("response.audio_transcript.done")[0].transcript == transcript
    assert c.of("conversation.item.input_audio_transcription.completed")[0].item_id == user_item.id
    # 24 kHz out: as many samples as the served audio's seconds at 24 kHz (the resampler keeps the length)
    audio = _audio(c, done.id)
    seconds = done.metadata["output_audio_seconds"]
    assert audio.size > 1000 and abs(audio.size - seconds * RATE) <= 0.01 * seconds * RATE + 50


@live
def test_a_manual_turn_commit_then_response_create(gateway):
    wave, _ = _speech([0.3, "speech", 0.3])

    async def body(c: Conversation):
        await c.connection.session.update(session={"turn_detection": None, **SMALL})
        await c.connection.input_audio_buffer.commit()  # nothing sent yet: the protocol's error
        await c.until(lambda e: e.type == "error")
        await c.stream(wave)
        await c.connection.input_audio_buffer.commit()
        await c.until(lambda e: e.type == "input_audio_buffer.committed")
        await c.connection.response.create()
        await c.until(lambda e: e.type == "response.done")

    c = _run(gateway, body)
    kinds = c.types()
    assert c.of("session.updated")[0].session.turn_detection is None
    assert c.of("error")[0].error.code == "input_audio_buffer_commit_empty"
    assert "input_audio_buffer.speech_started" not in kinds  # no VAD in manual mode
    assert kinds.index("input_audio_buffer.committed") < kinds.index("response.created")
    done = c.of("response.done")[0].response
    assert done.status == "completed" and done.usage.input_tokens > 0 and _audio(c, done.id).size > 0


@live
def test_a_typed_turn_a_cancelled_response_and_bad_events(gateway):
    async def body(c: Conversation):
        await c.connection.session.update(session={"turn_detection": None, "seed": 7,
                                                   "max_response_output_tokens": 64, "max_speech_tokens": 1024})
        await c.connection.response.cancel()  # nothing to cancel
        await c.connection.conversation.item.truncate(item_id="item_nope", content_index=0, audio_end_ms=10)
        await c.connection.conversation.item.create(item={
            "id": "item_typed1", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Hello there, how are you?"}]})
        await c.connection.response.create()
        await c.until(lambda e: e.type == "response.audio.delta")
        await c.connection.response.cancel()
        await c.until(lambda e: e.type == "response.done")

    c = _run(gateway, body)
    codes = [e.error.code for e in c.of("error")]
    assert sorted(codes) == ["item_truncate_invalid_item_id", "response_cancel_not_active"]
    item = c.of("conversation.item.created")[0].item
    assert item.id == "item_typed1" and item.content[0].text == "Hello there, how are you?"
    done = c.of("response.done")[0].response
    assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
    index = c.events.index(c.of("response.done")[0])
    assert not any(e.type == "response.audio.delta" for e in c.events[index:])  # not one chunk after it


@live
def test_barge_in_truncate_keeps_only_the_heard_part(gateway):
    wave, _ = _speech([0.3, "speech", 0.3])

    async def body(c: Conversation):
        await c.connection.session.update(session={"seed": 7, "max_response_output_tokens": 64,
                                                   "max_speech_tokens": 400})
        await c.stream(wave)
        first = await c.until(lambda e: e.type == "response.audio.delta")
        await c.stream(wave)  # the user talks over the bot
        await c.until(lambda e: e.type == "response.done")
        await c.connection.conversation.item.truncate(item_id=first.item_id, content_index=0, audio_end_ms=300)
        await c.until(lambda e: e.type == "conversation.item.truncated")

    c = _run(gateway, body)
    done = c.of("response.done")[0].response
    assert done.status == "cancelled" and done.status_details.reason == "turn_detected"
    truncated = c.of("conversation.item.truncated")[0]
    assert truncated.audio_end_ms == 300 and truncated.item_id == done.output[0].id
    full = c.of("response.audio_transcript.done")[0].transcript
    heard = truncated.model_extra["transcript"]  # an extension: the history keeps this
    assert len(heard) < len(full) or not full


# ---- the protocol layer offline (a fake socket; requests are checked as tritonclient builds them) -------------------
class FakeSocket:
    def __init__(self, beta: bool = True):
        self.query_params = {"model": "step-audio"}
        self.headers = {"openai-beta": "realtime=v1"} if beta else {}
        self.sent: list[dict] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


def _bridge(beta: bool = True):
    from gateway.openai_realtime import bridge_for
    from gateway.realtime import RealtimeLimits

    socket = FakeSocket(beta)
    return socket, bridge_for(socket, None, RealtimeLimits())


def _wire(request: dict):
    from tritonclient.grpc._utils import _get_inference_request

    return _get_inference_request(model_name=request["model_name"], inputs=request["inputs"], model_version="",
                                  request_id="", outputs=request["outputs"], sequence_id=request["sequence_id"],
                                  sequence_start=request["sequence_start"], sequence_end=request["sequence_end"],
                                  priority=0, timeout=None, parameters=request.get("parameters"))


def test_client_events_become_start_options_and_one_control_per_request():
    socket, bridge = _bridge()

    async def main():
        await bridge._handle({"type": "session.update", "session": {
            "turn_detection": None, "instructions": "Be brief.", "max_response_output_tokens": 100000, "seed": 3,
            "tools": [{"type": "function"}], "unheard_of": True}})
        await bridge._handle({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
        await bridge._handle({"type": "response.create", "response": {"modalities": ["text"]}})
        await bridge._handle({"type": "session.update", "session": {"seed": 4}})  # too late: a warning

    asyncio.run(main())
    requests = []
    while not bridge.requests.empty():
        requests.append(bridge.requests.get_nowait())
    wire = [_wire(r) for r in requests]  # tritonclient accepts every request the bridge builds
    assert [r["sequence_start"] for r in requests] == [True, False, False]
    start = {i.name for i in wire[0].inputs}
    assert {"SAMPLE_RATE", "SEED", "MAX_NEW_TOKENS", "CONTROL"} <= start
    controls = [json.loads(r["inputs"][-1]._raw_content[4:]) for r in requests]
    assert controls[0] == {"type": "session", "turn_detection": None, "instructions": "Be brief."}
    assert controls[1:] == [{"type": "text", "text": "hi"}, {"type": "response.create", "audio": False}]
    assert bridge.options.max_new_tokens == 256  # OpenAI's bound is a ceiling: the served cap applies
    kinds = [e["type"] for e in socket.sent]
    assert kinds == ["session.updated", "warning", "session.updated", "warning"]
    assert socket.sent[1]["warning"]["fields"] == ["tools", "unheard_of"]
    assert socket.sent[3]["warning"]["fields"] == ["seed (fixed once audio started)"]


@pytest.mark.parametrize("event", [
    {"type": "input_audio_buffer.append", "audio": "not base64!"},
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
    {"type": "conversation.item.create", "item": {"type": "function_call", "name": "x"}},
    {"type": "conversation.item.create", "item": {"role": "user", "content": [{"type": "input_text",
                                                                                 "text": "x" * 5000}]}},
    {"type": "conversation.item.create", "item": {"role": "user", "content": [{"type": "input_audio",
                                                                                 "audio": "AAAA"}]}},
    {"type": "conversation.item.truncate", "item_id": "item_x", "audio_end_ms": -5},
    {"type": "conversation.item.delete", "item_id": "item_x"},
    {"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}},
    {"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad"}}},
    {"type": "session.update", "session": {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
    {"type": "session.update", "session": "not an object"},
    {"type": "response.create", "response": {"instructions": "x" * 9000}},
    {"type": 5}, ["a list"], {"no": "type"},
])
def test_hostile_client_events_are_errors_and_send_nothing_upstream(event):
    socket, bridge = _bridge()
    asyncio.run(bridge._handle(event))
    assert [e["type"] for e in socket.sent] == ["error"] and socket.sent[0]["error"]["message"]
    assert bridge.requests.empty() and not bridge.started


def test_session_events_become_the_protocols_in_order_with_24khz_audio():
    socket, bridge = _bridge()
    served = np.sin(np.arange(22050) / 10).astype(np.float32) * 0.5  # one second at the TTS rate

    async def main():
        for event in [{"type": "session.created", "session": {}},
                      {"type": "input_audio_buffer.speech_started", "audio_start_ms": 400},
                      {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1900, "audio_start_ms": 400},
                      {"type": "response.created", "response": {"id": "resp_1", "speculative": True}},
                      {"type": "response.audio_transcript.delta", "response_id": "resp_1", "delta": "Hi."},
                      *[{"type": "response.audio.delta", "response_id": "resp_1", "sample_rate": 22050,
                         "delta": _pcm16(served[i:i + 2205])} for i in range(0, 22050, 2205)],
                      {"type": "conversation.item.input_audio_transcription.completed", "response_id": "resp_1",
                       "transcript": "hello"},
                      {"type": "response.done", "response": {"id": "resp_1", "status": "completed",
                                                             "usage": {"input_audio_tokens": 50,
                                                                       "output_text_tokens": 3}}},
                      {"type": "session.closed", "reason": "ended"}]:
            await bridge._send(event)

    asyncio.run(main())
    kinds = [e["type"] for e in socket.sent if e["type"] != "response.audio.delta"]
    assert kinds == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "conversation.item.created", *REPLY_EVENTS,
                     "response.audio_transcript.delta", "conversation.item.input_audio_transcription.completed",
                     *DONE_EVENTS, "session.closed"]
    assert all("event_id" in e for e in socket.sent)
    user = socket.sent[3]["item"]
    assert socket.sent[0]["item_id"] == socket.sent[2]["item_id"] == user["id"]
    transcription = next(e for e in socket.sent if e["type"].endswith("transcription.completed"))
    assert transcription["item_id"] == user["id"]
    audio = np.concatenate([np.frombuffer(base64.b64decode(e["delta"]), "<i2") for e in socket.sent
                            if e["type"] == "response.audio.delta"])
    assert abs(audio.size - RATE) <= 2  # one second at 24 kHz, the resampler's tail flushed at response.done
    done = socket.sent[-2]["response"]
    assert done["status"] == "completed" and done["usage"]["input_tokens"] == 50 and done["usage"]["output_tokens"] == 3


def test_the_ga_dialect_names_and_session_shape():
    socket, bridge = _bridge(beta=False)

    async def main():
        await bridge._handle({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None},
                      "output": {"voice": "Tingting"}}}})
        await bridge._send({"type": "response.created", "response": {"id": "resp_1"}})
        await bridge._send({"type": "response.audio_transcript.delta", "response_id": "resp_1", "delta": "x"})
        await bridge._send({"type": "response.cancelled", "response_id": "resp_1", "reason": "barge_in"})

    asyncio.run(main())
    session = socket.sent[0]["session"]
    assert session["audio"]["input"]["format"]["rate"] == 16000 and session["audio"]["input"]["turn_detection"] is None
    assert bridge.options.sample_rate == 16000 and bridge.options.voice == "Tingting"
    kinds = [e["type"] for e in socket.sent]
    assert "conversation.item.added" in kinds and "response.output_audio_transcript.delta" in kinds
    done = socket.sent[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
