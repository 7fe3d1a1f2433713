"""``/v1/realtime``: a WebSocket voice session through the gateway to the served ``realtime_session``."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.gateway.helpers import API_KEY
from tests.realtime.scripted import build

pytestmark = pytest.mark.server
RATE = 16000
CHUNK = int(0.1 * RATE)


def _pcm16(wave: np.ndarray) -> str:
    return base64.b64encode((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def _url(gateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1/realtime"


async def _events(ws, into: list, seconds: float) -> None:
    try:
        while True:
            into.append(json.loads(await asyncio.wait_for(ws.recv(), seconds)))
    except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed):  # nothing more, or the session ended
        pass


async def _stream(ws, wave: np.ndarray, speed: float, events: list) -> None:
    for i in range(0, wave.shape[0], CHUNK):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _pcm16(wave[i:i + CHUNK])}))
        await _events(ws, events, CHUNK / RATE / speed)


def test_a_spoken_turn_over_the_websocket(gateway):
    session = build(RATE, [0.4, "speech", 0.9])

    async def run():
        events: list = []
        async with connect(_url(gateway), additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": {
                "sample_rate": RATE, "seed": 7, "max_response_output_tokens": 8, "max_speech_tokens": 40}}))
            await ws.send(json.dumps({"type": "no.such.event"}))
            await _stream(ws, session.wave, 4.0, events)
            deadline = time.monotonic() + 90
            while not any(e["type"] == "response.done" for e in events) and time.monotonic() < deadline:
                await _stream(ws, np.zeros(CHUNK, np.float32), 1.0, events)
            await ws.send(json.dumps({"type": "session.close"}))
            await _events(ws, events, 10)
        return events

    events = asyncio.run(run())
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["session.updated", "error"] and "unknown event type" in events[1]["error"]["message"]
    main = [k for k in kinds if k in ("session.created", "input_audio_buffer.speech_started",
                                      "input_audio_buffer.speech_stopped", "response.created", "response.done",
                                      "session.closed")]
    assert main == ["session.created", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                    "response.created", "response.done", "session.closed"]
    (start, end), = session.speech
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert abs(started["audio_start_ms"] / 1000 - start) <= 0.1 and abs(stopped["audio_end_ms"] / 1000 - end) <= 0.1
    audio = [e for e in events if e["type"] == "response.audio.delta"]
    assert audio and all(e["sample_rate"] == 22050 for e in audio)
    samples = np.concatenate([np.frombuffer(base64.b64decode(e["delta"]), "<i2") for e in audio])
    assert samples.size > 1000 and np.abs(samples).max() > 0


def test_websocket_auth_browser_subprotocol_and_pace_limit(gateway):
    async def run():
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with connect(_url(gateway)):
                pass
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with connect(_url(gateway), additional_headers={"Authorization": "Bearer wrong"}):
                pass
        events: list = []
        async with connect(_url(gateway), subprotocols=[f"openai-insecure-api-key.{API_KEY}"]) as ws:
            assert ws.subprotocol == f"openai-insecure-api-key.{API_KEY}"
            burst = np.zeros(4 * RATE, np.float32)  # 4 s per message, sent at once: past the 10 s burst at once
            for _ in range(4):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _pcm16(burst)}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "not base64!"}))
            # At once: the gateway answers all three itself, while the session (4 s idle timeout in the tests, which
            # a loaded machine can reach before a later send) still runs.
            await ws.send(json.dumps({"type": "session.update", "session": {"sample_rate": 8000}}))
            await _events(ws, events, 5)
        return events

    events = asyncio.run(run())
    messages = [e["error"]["message"] for e in events if e["type"] == "error"]
    assert any("faster than real time" in m for m in messages)
    assert any("base64" in m for m in messages)
    assert any("before the first audio" in m for m in messages)
    assert [e["type"] for e in events].count("session.created") == 1


# ---- a dead realtime_session stub: the socket ends and its key's slot is freed ---------------------------------
STALL_S = 6.0  # the gateway's stall timeout here; above the tests' 4 s session idle timeout


@pytest.fixture
def fault_gateway(model_repository, tmp_path):
    """A server of its own (its stubs get killed; should Triton abort, the session's server lives on) and a gateway
    allowing one stream per key, so a leaked lease shows as a refused socket."""
    from gateway.process import GatewayProcess
    from stepaudio_server.launcher import TritonServer

    with TritonServer(model_repository, log_path=tmp_path / "server.log").start(timeout=300) as server:
        with GatewayProcess(server.grpc_url, tmp_path / "voices.sqlite3", tmp_path / "gateway.log",
                            "--stall-timeout", str(STALL_S), "--max-concurrent", "1", "--rate-per-minute", "1000",
                            keys=(API_KEY,)) as gateway:
            yield server, gateway


def _realtime_ready(server) -> bool:
    import tritonclient.grpc as grpcclient

    try:
        return grpcclient.InferenceServerClient(server.grpc_url).is_model_ready("realtime_session")
    except Exception:  # noqa: BLE001 - not answering yet
        return False


def test_a_dead_session_stub_frees_the_socket_and_its_lease(fault_gateway):
    import os
    import signal

    from stepaudio_server.supervisor import list_stubs

    server, gateway = fault_gateway
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def opened(ws) -> list:
        await ws.send(json.dumps({"type": "session.update", "session": {"sample_rate": RATE}}))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _pcm16(np.zeros(CHUNK, np.float32))}))
        events: list = []
        deadline = time.monotonic() + 60
        while not any(e["type"] == "session.created" for e in events) and time.monotonic() < deadline:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return events

    async def run():
        async with connect(_url(gateway), additional_headers=headers) as ws:
            assert any(e["type"] == "session.created" for e in await opened(ws))
            with pytest.raises(websockets.exceptions.InvalidStatus):  # the key's one slot is taken
                async with connect(_url(gateway), additional_headers=headers):
                    pass
            stubs = [s.pid for s in list_stubs(server.process.pid) if s.model == "realtime_session" and not s.exited]
            assert stubs
            for pid in stubs:
                os.kill(pid, signal.SIGKILL)
            events: list = []
            start = time.monotonic()
            try:  # the client waits, as an idle microphone would: nothing comes back from a dead stub
                while True:
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), STALL_S + 30)))
            except websockets.exceptions.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
            waited = time.monotonic() - start
        errors = [e["error"] for e in events if e["type"] == "error"]
        assert any(e["code"] == "upstream_timeout" for e in errors), events
        assert code == 1011 and waited < STALL_S + 20, (code, waited)
        if server.process.poll() is not None:
            pytest.xfail(f"tritonserver exited after the stub kill (docs/hardening.md, defect 4):\n{server.log_tail(20)}")
        deadline = time.monotonic() + 120  # the supervisor reloads the model
        while not _realtime_ready(server) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        async with connect(_url(gateway), additional_headers=headers) as ws:  # the same key, its slot free again
            assert any(e["type"] == "session.created" for e in await opened(ws))

    asyncio.run(run())
