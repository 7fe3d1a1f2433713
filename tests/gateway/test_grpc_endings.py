"""How the gateway and the clients end their gRPC calls to Triton (stepaudio_contract/compat.py:
``in_band_grpc_cancel``): a call Triton is still finishing is never cancelled — on 2.51 that segfaults the server
(bench/realtime_end_storm.py reproduces it). Fakes of the gRPC call record every cancel and whether the call was
still running then."""

from __future__ import annotations

import asyncio
import json
import types

import numpy as np
import pytest
from fastapi import WebSocketDisconnect

from clients import triton_io
from gateway.realtime import Bridge, RealtimeLimits
from gateway.triton import Triton


def _result(outputs: dict[str, np.ndarray], final: bool = False):
    response = types.SimpleNamespace(outputs=[types.SimpleNamespace(name=name) for name in outputs],
                                     parameters={"triton_final_response": types.SimpleNamespace(bool_param=final)})
    return types.SimpleNamespace(get_response=lambda: response, as_numpy=lambda name: outputs.get(name))


def _event(kind: str):
    return _result({"EVENT": np.array([json.dumps({"type": kind}).encode()], np.object_)})


class FakeCall:
    """A ``stream_infer`` call: ``answer(request)`` → responses for each request; the call ends a moment after the
    request side is closed (as Triton does once every request is answered)."""

    def __init__(self, requests, answer):
        self.responses: asyncio.Queue = asyncio.Queue()
        self.requests_seen: list[dict] = []
        self.cancels, self.cancelled_while_running, self.done = 0, False, False
        self._pump = asyncio.get_running_loop().create_task(self._serve(requests, answer))

    async def _serve(self, requests, answer):
        async for request in requests:
            self.requests_seen.append(request)
            for item in answer(request):
                await self.responses.put(item)
        await asyncio.sleep(0.05)  # Triton completing the call after the half-close: the window a cancel must miss
        await self.responses.put(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.responses.get()
        if item is None:
            self.done = True
            raise StopAsyncIteration
        return item, None

    def cancel(self):
        self.cancels += 1
        self.cancelled_while_running |= not self.done
        self._pump.cancel()


class FakeClient:
    def __init__(self, answer, version: str = "2.51.0", inputs=("TEXT", "CANCEL")):
        self.answer, self.version, self.inputs, self.calls = answer, version, inputs, []

    def stream_infer(self, requests):
        self.calls.append(FakeCall(requests, self.answer))
        return self.calls[-1]

    async def get_server_metadata(self):
        return types.SimpleNamespace(version=self.version)

    async def get_model_metadata(self, model):
        return types.SimpleNamespace(inputs=[types.SimpleNamespace(name=name) for name in self.inputs])


class FakeSocket:
    """Sends ``messages`` one by one, then either disconnects or waits for ever."""

    def __init__(self, messages: list[dict], disconnect: bool):
        self.messages, self.disconnect, self.sent = list(messages), disconnect, []

    async def receive_text(self) -> str:
        if self.messages:
            return json.dumps(self.messages.pop(0))
        if self.disconnect:
            raise WebSocketDisconnect(1000)
        await asyncio.Event().wait()

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


def _realtime_answer(request):
    return [_event("session.closed")] if request["sequence_end"] else [_event("input_audio_buffer.speech_started")]


@pytest.mark.parametrize("disconnect", [False, True], ids=["session.close", "socket gone"])
def test_a_realtime_session_waits_for_its_call_to_end_instead_of_cancelling_it(disconnect):
    append = {"type": "input_audio_buffer.append", "audio": ""}
    messages = [append] if disconnect else [append, {"type": "session.close"}]

    async def run():
        client = FakeClient(_realtime_answer)
        bridge = Bridge(FakeSocket(messages, disconnect), types.SimpleNamespace(client=client), RealtimeLimits())
        await asyncio.wait_for(bridge.run(), 10)
        return bridge, client.calls[0]

    bridge, call = asyncio.run(run())
    assert call.requests_seen[-1]["sequence_end"]  # the sequence was ended either way
    assert call.done and not call.cancelled_while_running
    assert bridge.close_code == 1000 and any(e["type"] == "session.closed" for e in bridge.ws.sent)


def test_a_finished_client_stream_is_closed_and_one_left_early_is_cancelled():
    class Conn:
        def __init__(self):
            self.stops = []

        def start_stream(self, callback):
            self.callback = callback

        def async_stream_infer(self, model, inputs, enable_empty_final_response):
            for index in range(3):
                self.callback(_result({"WAVEFORM": np.zeros(4, np.float32)}, final=index == 2), None)

        def stop_stream(self, cancel_requests=False):
            self.stops.append(cancel_requests)

    conn = Conn()
    assert len(list(triton_io.grpc_stream(conn, "tts_stream", {"TEXT": np.array([b"x"], np.object_)}, ["WAVEFORM"]))) == 3
    early = triton_io.grpc_stream(conn, "tts_stream", {"TEXT": np.array([b"x"], np.object_)}, ["WAVEFORM"])
    next(early)
    early.close()
    assert conn.stops == [False, True]


@pytest.mark.parametrize("version, in_band", [("2.51.0", True), ("2.57.0", False)])
def test_a_tts_stream_left_early_is_ended_with_cancel_on_251_and_cancelled_on_a_fixed_server(version, in_band):
    def answer(request):
        if any(i.name() == "CANCEL" for i in request["inputs"]):
            return []  # the CANCEL request's own stream ends with its final flag
        return [_result({"WAVEFORM": np.zeros(4, np.float32)}) for _ in range(3)]

    async def run():
        triton = Triton("127.0.0.1:1")
        triton.client = FakeClient(answer, version=version)
        stream = triton.stream("tts_stream", {"TEXT": np.array([b"x"], np.object_)}, ["WAVEFORM"])
        await anext(stream)
        await stream.aclose()  # the client went away after the first chunk
        for _ in range(100):
            if not triton._draining:
                break
            await asyncio.sleep(0.01)
        return triton.client.calls

    calls = asyncio.run(run())
    first = calls[0]
    token = first.requests_seen[0]["parameters"].get("cancel_token")
    if in_band:
        assert token and len(calls) == 2
        cancel = calls[1].requests_seen[0]
        assert [i.name() for i in cancel["inputs"]] == ["CANCEL"]
        assert first.done and not first.cancelled_while_running
    else:
        assert token is None and len(calls) == 1 and first.cancelled_while_running
