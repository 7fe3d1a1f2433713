"""Silero VAD (the package's pretrained ONNX) as a stream: turn boundaries on scripted real speech."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.realtime import (
    RealtimeConfig,
    RealtimeController,
    SileroVad,
    SpeechStarted,
    SpeechStopped,
    StartReply,
)
from stepaudio.realtime.vad import WINDOW_SAMPLES, run_batched
from tests.realtime.scripted import build, chunks

TOLERANCE_S = 0.1


@pytest.fixture(scope="module")
def vad():
    return SileroVad()


def frames_of(vad, wave, rate, seconds=0.02):
    stream = vad.stream(rate)
    return [f for piece in chunks(wave, rate, seconds) for f in stream.feed(piece)]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_turn_boundaries_within_100_ms_of_the_known_ones(vad, rate):
    session = build(rate, [0.6, "speech", 1.2, "speech", 1.0])
    controller = RealtimeController(RealtimeConfig())
    starts, stops, replies = [], [], []
    for frame in frames_of(vad, session.wave, rate):
        for action in controller.on_frame(frame):
            if isinstance(action, SpeechStarted):
                starts.append(action.audio_start_s)
            elif isinstance(action, SpeechStopped):
                stops.append(action.audio_end_s)
                controller.on_reply_finished(controller.reply_id)
            elif isinstance(action, StartReply):
                replies.append(action)
    assert len(starts) == len(stops) == 2, (starts, stops)
    for (known_start, known_end), start, stop in zip(session.speech, starts, stops):
        assert abs(start - known_start) <= TOLERANCE_S, (start, known_start)
        assert abs(stop - known_end) <= TOLERANCE_S, (stop, known_end)
    assert controller.stats.turns == 2


def test_silence_is_not_speech_and_speech_is(vad):
    session = build(16000, [1.0, "speech", 0.5])
    frames = frames_of(vad, session.wave, 16000)
    (start, end), = session.speech
    inside = [f.probability for f in frames if start + 0.2 < f.start_s < end - 0.2]
    outside = [f.probability for f in frames if f.start_s + 0.032 < start - 0.1]
    assert np.mean(inside) > 0.8 and max(outside) < 0.1


def test_any_cut_of_the_audio_gives_the_same_frames(vad):
    session = build(8000, [0.3, "speech:1.5", 0.3])
    whole = frames_of(vad, session.wave, 8000, seconds=10)
    pieces = frames_of(vad, session.wave, 8000, seconds=0.013)
    assert [f.start_s for f in whole] == [f.start_s for f in pieces]
    np.testing.assert_allclose([f.probability for f in whole], [f.probability for f in pieces], atol=1e-6)
    assert len(whole) == int(session.wave.shape[0] * 2) // WINDOW_SAMPLES


def test_streams_batched_together_equal_each_alone(vad):
    a, b = build(16000, ["speech:1.0"]).wave, build(16000, [0.2, "speech:1.3"]).wave
    alone = [[f.probability for f in frames_of(vad, w, 16000, seconds=10)] for w in (a, b)]
    streams = [vad.stream(16000), vad.stream(16000)]
    work = []
    for stream, wave in zip(streams, (a, b)):
        stream._pending = np.asarray(wave, np.float32)  # 16 kHz already: the resampler is the identity
        work.append((stream, stream.take_windows()))
    batched = run_batched(vad, work)
    assert [len(f) for f in batched] == [len(p) for p in alone] and len(alone[0]) < len(alone[1])
    for frames, probabilities in zip(batched, alone):
        np.testing.assert_allclose([f.probability for f in frames], probabilities, atol=1e-5)
    with pytest.raises(ValueError):
        run_batched(vad, [work[0], work[0]])


@pytest.mark.parametrize("chunk", [np.zeros(10, np.int16), np.zeros((1, 1, 10), np.float32), [0.0] * 10])
def test_bad_chunks_are_refused(vad, chunk):
    with pytest.raises(ValueError):
        vad.stream(16000).feed(chunk)


def test_bad_rate_is_refused(vad):
    with pytest.raises(ValueError):
        vad.stream(0)
