"""The served real-time building blocks: ``vad`` (Silero per session) and ``stream_tokenizer``, over gRPC sequences."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from stepaudio.realtime import (
    RealtimeConfig,
    RealtimeController,
    SileroVad,
    SpeechStarted,
    SpeechStopped,
    VadFrame,
)
from stepaudio.realtime.vad import WINDOW_SECONDS
from tests.realtime.scripted import build, clip
from tests.server.helpers import grpc_input
from tests.server.realtime_helpers import live_sequences, rendered_parameter, sequence_infer, stream_through

pytestmark = pytest.mark.server
_ids = itertools.count(1000)


def next_id() -> int:
    return next(_ids)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_served_vad_finds_the_turns_and_equals_the_library(grpc_client, rate):
    session = build(rate, [0.6, "speech", 1.0, "speech", 0.8])
    responses = stream_through(grpc_client, "vad", next_id(), session.wave, rate, ["PROBABILITY", "FIRST_WINDOW"])
    probabilities = np.concatenate([r["PROBABILITY"] for r in responses])
    firsts = [int(r["FIRST_WINDOW"][0]) for r in responses]
    counts = np.cumsum([0] + [r["PROBABILITY"].shape[0] for r in responses])
    assert firsts == list(counts[:-1])  # every window numbered once, in order
    local = SileroVad().stream(rate).feed(session.wave)
    np.testing.assert_allclose(probabilities, [f.probability for f in local], atol=1e-5)
    controller = RealtimeController(RealtimeConfig())
    starts, stops = [], []
    for index, probability in enumerate(probabilities):
        for action in controller.on_frame(VadFrame(index * WINDOW_SECONDS, float(probability))):
            if isinstance(action, SpeechStarted):
                starts.append(action.audio_start_s)
            elif isinstance(action, SpeechStopped):
                stops.append(action.audio_end_s)
                controller.on_reply_finished(controller.reply_id)
    assert len(starts) == len(stops) == 2
    for (start, end), found_start, found_end in zip(session.speech, starts, stops):
        assert abs(found_start - start) <= 0.1 and abs(found_end - end) <= 0.1


@pytest.mark.parametrize("rate", [16000, 8000])
def test_streamed_ids_equal_one_shot_tokenization(grpc_client, model_repository, rate):
    from stepaudio.tokenizer import AudioTokenizer

    wave = clip(rate)[: int(2.5 * rate)]
    responses = stream_through(grpc_client, "stream_tokenizer", next_id(), wave, rate, ["AUDIO_IDS"])
    streamed = [list(r["AUDIO_IDS"]) for r in responses]
    tokenizer = AudioTokenizer.from_checkpoint(
        rendered_parameter(model_repository, "stream_tokenizer", "tokenizer_checkpoint"), backend="onnx",
        vq02_onnx=model_repository / "tokenizer" / "1" / "vq02_encoder_chunk.onnx",
        vq06_segment_seconds=float(rendered_parameter(model_repository, "stream_tokenizer", "vq06_segment_seconds")))
    expected = tokenizer.tokenize(wave, rate, energy_norm=False).ids
    assert sum(streamed, []) == expected and len(expected) > 30
    before_end = sum(streamed[:-1], [])
    if float(rendered_parameter(model_repository, "stream_tokenizer", "vq06_segment_seconds")) < 2.0:
        assert before_end, "with segments shorter than the audio, ids must leave before END"
    assert len(before_end) % 5 == 0  # whole 2:3 groups only


def _refused(call, *words):
    with pytest.raises(InferenceServerException) as info:
        call()
    message = str(info.value).lower()
    assert any(w in message for w in words), message
    return message


@pytest.mark.parametrize("model,outputs", [("vad", ["PROBABILITY"]), ("stream_tokenizer", ["AUDIO_IDS"])])
def test_bad_input_is_refused_and_the_model_goes_on(grpc_client, model, outputs):
    chunk = np.zeros(1600, np.float32)
    _refused(lambda: sequence_infer(grpc_client, model, next_id(), chunk, outputs, rate=0, start=True), "sample rate")
    _refused(lambda: sequence_infer(grpc_client, model, next_id(), chunk, outputs, start=True), "sample_rate")
    live = next_id()
    sequence_infer(grpc_client, model, live, chunk, outputs, rate=16000, start=True)
    _refused(lambda: sequence_infer(grpc_client, model, live, chunk, outputs, rate=8000), "differs")
    _refused(lambda: sequence_infer(grpc_client, model, live, np.zeros(16000 * 6, np.float32), outputs), "at most")
    _refused(lambda: grpc_client.infer(model, [grpc_input("AUDIO", np.zeros((1, 160), np.float64))], sequence_id=live),
             "data-type", "datatype", "fp64", "type")
    sequence_infer(grpc_client, model, live, chunk, outputs, end=True)
    _refused(lambda: sequence_infer(grpc_client, model, live, chunk, outputs), "start")  # after END
    _refused(lambda: sequence_infer(grpc_client, model, 987654321, chunk, outputs), "start")  # never started
    again = next_id()  # the model still serves
    sequence_infer(grpc_client, model, again, chunk, outputs, rate=16000, start=True)
    sequence_infer(grpc_client, model, again, chunk, outputs, end=True)


def _wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def test_abandoned_sessions_are_freed_by_the_idle_timeout(grpc_client, triton_server, model_repository):
    idle = float(rendered_parameter(model_repository, "vad", "idle_timeout_s"))
    if idle > 10:
        pytest.skip(f"the repository's idle timeout is {idle:g} s (the tests render 4 s)")
    chunk = np.zeros(800, np.float32)
    for model, outputs in (("vad", ["PROBABILITY"]), ("stream_tokenizer", ["AUDIO_IDS"])):
        assert _wait_for(lambda m=model: live_sequences(triton_server, m) == 0, 3 * idle)
        for _ in range(100):  # opened, fed once, never ended
            sequence_infer(grpc_client, model, next_id(), chunk, outputs, rate=16000, start=True)
        assert live_sequences(triton_server, model) == 100
    abandoned = next_id()
    sequence_infer(grpc_client, "vad", abandoned, chunk, ["PROBABILITY"], rate=16000, start=True)
    for model in ("vad", "stream_tokenizer"):
        assert _wait_for(lambda m=model: live_sequences(triton_server, m) == 0, 3 * idle + 5), model
    _refused(lambda: sequence_infer(grpc_client, "vad", abandoned, chunk, ["PROBABILITY"]), "start", "not live")
