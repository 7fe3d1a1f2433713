"""The served real-time session (``realtime_session``) end to end: turns, speculation, barge-in, limits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from clients.realtime_client import TritonRealtimeSession
from tests.server.realtime_driver import Driver, counter
from tests.server.realtime_helpers import live_sequences, rendered_parameter

pytestmark = pytest.mark.server
TOLERANCE_S = 0.1
# Small replies: a tiny random model gives noise, the timing and turn-taking are what is tested.
REPLY = dict(seed=7, max_new_tokens=12, tts_max_new_tokens=60)
DONE = "response.done"


def _is(kind):
    return lambda event: event.type == kind


@pytest.mark.parametrize("rate", [16000, 8000])
def test_two_turns_one_reply_each_with_boundaries_transcripts_and_ordered_events(triton_server, rate):
    driver = Driver(triton_server, rate, **REPLY)
    try:
        driver.silence(0.5)
        spans = [driver.speech()]
        driver.until(_is(DONE))
        driver.silence(0.3)
        spans.append(driver.speech())
        driver.until(lambda e: e.type == DONE and len(driver.of_type(DONE)) == 2)
    finally:
        driver.end()
    started, stopped = driver.of_type("input_audio_buffer.speech_started"), driver.of_type("input_audio_buffer.speech_stopped")
    assert len(started) == len(stopped) == 2
    for (start, end), s, e in zip(spans, started, stopped):
        assert abs(s.data["audio_start_ms"] / 1000 - start) <= TOLERANCE_S
        assert abs(e.data["audio_end_ms"] / 1000 - end) <= TOLERANCE_S
    created, done = driver.of_type("response.created"), driver.of_type(DONE)
    assert len(created) == len(done) == 2  # one reply per turn
    assert all(d.data["response"]["status"] == "completed" for d in done)
    kinds = [e.type for _, e in driver.events]
    assert kinds[0] == "session.created" and kinds[-1] == "session.closed"
    for c in created:  # per reply: created → deltas → transcript → done, audio heard
        rid = c.data["response"]["id"]
        own = [e.type for _, e in driver.events if rid in (e.data.get("response_id"), e.data.get("response", {}).get("id"))]
        assert own[0] == "response.created" and own[-1] == DONE
        assert own[-2] == "conversation.item.input_audio_transcription.completed"
        assert set(own[1:-2]) <= {"response.audio.delta", "response.audio_transcript.delta"}
        assert driver.audio(rid).size > 0
    order = [e for e in kinds if e in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                       "response.created", DONE)]
    assert order == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "response.created", DONE] * 2
    # the text history: each turn adds the user's transcript and the bot's text (what is not empty)
    expected = 0
    for d in done:
        expected += bool(d.data["response"]["user_transcript"]) + bool(d.data["response"]["output_transcript"])
        assert d.data["response"]["history_turns"] == expected
    assert expected >= 2


def test_short_pause_discards_the_speculation_and_long_pause_commits_the_same_reply(triton_server):
    discarded_before = counter(triton_server, "stepaudio_realtime_replies_total", outcome="discarded")
    committed_before = counter(triton_server, "stepaudio_realtime_replies_total", outcome="committed")
    replies = {}
    for speculation in (True, False):
        driver = Driver(triton_server, 16000, speculation=speculation, **REPLY)
        try:
            driver.silence(0.4)
            driver.speech(1.6)
            driver.silence(0.4)  # a pause: longer than pause_ms (200), shorter than end of turn (600)
            driver.speech()
            driver.until(_is(DONE))
            driver.silence(0.2)
        finally:
            driver.end()
        assert len(driver.of_type("input_audio_buffer.speech_started")) == 1  # one turn, resumed
        created = driver.of_type("response.created")
        assert len(created) == 1 and created[0].data["response"]["speculative"] is speculation
        rid = created[0].data["response"]["id"]
        heard = {e.data.get("response_id") for _, e in driver.events if e.type.startswith("response.audio")}
        assert heard == {rid}  # nothing of the discarded speculation was sent
        replies[speculation] = driver.audio(rid)
    assert counter(triton_server, "stepaudio_realtime_replies_total", outcome="discarded") >= discarded_before + 1
    assert counter(triton_server, "stepaudio_realtime_replies_total", outcome="committed") == committed_before + 1
    assert replies[True].size > 0
    np.testing.assert_array_equal(replies[True], replies[False])  # same seed, same audio span: the same reply


def test_barge_in_stops_the_audio_and_the_next_turn_works(triton_server):
    barge_ins_before = counter(triton_server, "stepaudio_realtime_replies_total", outcome="cancelled")
    tts_cancels_before = counter(triton_server, "stepaudio_realtime_cancelled_streams_total", stream="tts_stream")
    driver = Driver(triton_server, 16000, seed=7, max_new_tokens=12, tts_max_new_tokens=400)
    try:
        driver.silence(0.3)
        driver.speech(1.5)
        first_audio = driver.until(_is("response.audio.delta"))
        driver.speech(1.5)  # the user talks over the bot
        cancelled = driver.until(_is("response.cancelled"))
        driver.until(lambda e: e.type == DONE)
        driver.silence(0.2)
    finally:
        driver.end()
    rid = first_audio.data["response_id"]
    assert cancelled.data["response_id"] == rid and cancelled.data["reason"] == "barge_in"
    index = [e for _, e in driver.events].index(cancelled)
    assert not any(e.data.get("response_id") == rid for _, e in driver.events[index + 1:])  # not one more chunk
    assert not any(e.type == DONE and e.data["response"]["id"] == rid for _, e in driver.events)
    done = driver.of_type(DONE)
    assert len(done) == 1 and done[0].data["response"]["status"] == "completed"  # the next turn works
    assert driver.audio(done[0].data["response"]["id"]).size > 0
    assert len(driver.of_type("input_audio_buffer.speech_started")) == 2
    # the interrupted turn is in the history: the user's transcript and what the bot had said
    assert done[0].data["response"]["history_turns"] >= 2
    assert counter(triton_server, "stepaudio_realtime_replies_total", outcome="cancelled") == barge_ins_before + 1
    # The reply's speech (400 ids, still being generated when the user spoke) was cancelled, and tts_stream said so.
    assert counter(triton_server, "stepaudio_realtime_cancelled_streams_total", stream="tts_stream") >= tts_cancels_before + 1


def _refused(session: TritonRealtimeSession, *words, timeout: float = 10.0):
    events = list(session.events(timeout))
    errors = [e for e in events if e.type == "error"]
    assert errors, [e.type for e in events]
    message = errors[0].data["error"]["message"].lower()
    assert any(w in message for w in words), message


def test_bad_input_is_refused_and_the_session_goes_on(triton_server):
    chunk = np.zeros(1600, np.float32)
    for rate, words in ((4000, ("8000",)),):
        bad = TritonRealtimeSession(triton_server.grpc_url, rate)
        bad.send(chunk)
        _refused(bad, *words)
        bad.close()
    session = TritonRealtimeSession(triton_server.grpc_url, 16000)
    try:
        session.send(chunk)
        assert next(session.events(10)).type == "session.created"
        session.send(np.zeros(16000 * 6, np.float32))
        _refused(session, "at most")
        session.send(chunk)  # the session goes on
        session.send(np.zeros(0, np.float32), end=True)
        assert any(e.type == "session.closed" for e in _drain(session))
        session.send(chunk)  # after END
        _refused(session, "start")
    finally:
        session.close()
    unknown = TritonRealtimeSession(triton_server.grpc_url, 16000)
    unknown._started = True  # a sequence id the server never saw START for
    unknown.send(chunk)
    _refused(unknown, "start")
    unknown.close()


def _drain(session, seconds: float = 5.0):
    deadline, events = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        events += list(session.events(0.5))
        if any(e.type == "session.closed" for e in events):
            break
    return events


def test_idle_sessions_are_freed_and_100_dropped_sessions_leave_no_state(triton_server, model_repository):
    import tritonclient.grpc as grpcclient

    from tests.server.helpers import grpc_input

    idle = float(rendered_parameter(model_repository, "realtime_session", "idle_timeout_s"))
    if idle > 10:
        pytest.skip(f"the repository's idle timeout is {idle:g} s (the tests render 4 s)")
    quiet = TritonRealtimeSession(triton_server.grpc_url, 16000)
    quiet.send(np.zeros(1600, np.float32))  # then nothing: the idle timeout must end it
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    client.start_stream(callback=lambda result, error: None)
    for sequence_id in range(7_000_000, 7_000_100):  # 100 sessions opened, never ended, then the client leaves
        inputs = [grpc_input("AUDIO", np.zeros((1, 1600), np.float32)), grpc_input("SAMPLE_RATE", np.array([[16000]], np.int32))]
        client.async_stream_infer("realtime_session", inputs, sequence_id=sequence_id, sequence_start=True)
    deadline = time.monotonic() + 30
    while live_sequences(triton_server, "realtime_session") < 101 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_sequences(triton_server, "realtime_session") == 101
    client.stop_stream()
    client.close()
    events = _drain(quiet, 3 * idle + 10)
    quiet.close()
    assert [e.data["error"]["code"] for e in events if e.type == "error"] == ["session_expired"]
    assert events[-1].type == "session.closed"
    deadline = time.monotonic() + 3 * idle + 10
    while any(live_sequences(triton_server, m) for m in ("realtime_session", "vad")):
        assert time.monotonic() < deadline, "sessions outlived the idle timeout"
        time.sleep(0.5)


def test_a_session_streaming_silence_answers_with_keep_alives(triton_server):
    """A client that asked for no empty final responses (the gateway's asyncio client cannot ask) hears nothing of a
    session whose user streams silence; the session answers a chunk with an empty response once it has been quiet
    for ``keepalive_s`` (1 s in the tests), so such a client's stall timeout (the gateway's: 120 s) does not cut it."""
    import asyncio
    import json

    import tritonclient.grpc.aio as grpcaio

    from stepaudio_contract import client

    async def session() -> tuple[list[str | None], float]:
        grpc = grpcaio.InferenceServerClient(triton_server.grpc_url)
        requests: asyncio.Queue = asyncio.Queue()

        def request(start: bool = False, end: bool = False) -> dict:
            tensors = {"AUDIO": np.zeros((1, 0 if end else 1600), np.float32)}
            if start:
                tensors |= client.session_start({}, 16000, None)
            return {"model_name": "realtime_session", "inputs": client.infer_inputs(tensors), "sequence_id": 424242,
                    "sequence_start": start, "sequence_end": end,
                    "outputs": client.requested_outputs(["EVENT", "WAVEFORM"])}

        async def request_side():
            while (item := await requests.get()) is not None:
                yield item

        call = grpc.stream_infer(request_side())
        seen: list[str | None] = []  # each response's event type, None for an empty response

        async def read():
            async for result, error in call:
                assert error is None, error
                names = {o.name for o in result.get_response().outputs}
                event = json.loads(result.as_numpy("EVENT").reshape(-1)[0].decode())["type"] if "EVENT" in names else None
                seen.append(event)
                if event == "session.closed":
                    return

        reader = asyncio.create_task(read())
        started = time.monotonic()
        await requests.put(request(start=True))
        for _ in range(30):  # 3 s of silence at a microphone's pace
            await asyncio.sleep(0.1)
            await requests.put(request())
        quiet_s = time.monotonic() - started
        await requests.put(request(end=True))
        await asyncio.wait_for(reader, 60)
        await requests.put(None)
        async for _ in call:  # the call ends on its own (never cancelled while Triton finishes it)
            pass
        await grpc.close()
        return seen, quiet_s

    seen, quiet_s = asyncio.run(session())
    keep_alives = seen.count(None)
    assert seen[0] == "session.created" and seen[-1] == "session.closed", seen
    # One per keepalive_s of quiet at most, and at least one in 3 s (the exact count depends on scheduling).
    assert 1 <= keep_alives <= quiet_s / 1.0 + 1, seen
    assert not {event for event in seen if event is not None} - {"session.created", "session.closed"}, seen
