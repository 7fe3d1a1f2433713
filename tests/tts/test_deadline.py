"""The deadline cut of streaming TTS (stepaudio/tts/streaming.py) on a fake clock and a fake decoder stream: when a
chunk is cut early, how big it is, and that a stream with slack keeps the schedule's boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stepaudio.tokenizer.ids import AUDIO_ID_OFFSET
from stepaudio.tts.streaming import ChunkSchedule, Deadline, DeadlinePolicy, SpeechStream

SAMPLES_PER_TOKEN = 512  # 2 mel frames of 256 samples: 1 token = 23.2 ms at 22.05 kHz
RATE = 22050


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeDecoderStream:
    """Commits like Token2WavStream (chunk_tokens once chunk_tokens + lookahead are there) and spends ``decode_s``
    of the fake clock per commit; each chunk's audio is its tokens' samples."""

    def __init__(self, clock: FakeClock, decode_s: float, lookahead_tokens: int = 20):
        self.clock, self.decode_s, self.lookahead_tokens = clock, decode_s, lookahead_tokens
        self.tokens: list[int] = []
        self.committed_tokens, self.chunk_tokens = 0, 1

    def feed(self, tokens) -> np.ndarray:
        self.tokens.extend(int(t) for t in tokens)
        samples = 0
        while len(self.tokens) - self.committed_tokens >= self.chunk_tokens + self.lookahead_tokens:
            self.committed_tokens += self.chunk_tokens
            self.clock.now += self.decode_s
            samples += self.chunk_tokens * SAMPLES_PER_TOKEN
        return np.zeros(samples, np.float32)


def run(n_ids: int, step_s: float, decode_s: float, policy: DeadlinePolicy | None):
    """Feeds ``n_ids`` ids one per ``step_s`` of the fake clock; (tokens, early) per chunk."""
    clock = FakeClock()
    decoder = FakeDecoderStream(clock, decode_s)
    speech = SpeechStream(decoder, ChunkSchedule(25, 2.0, 200), Deadline(policy, SAMPLES_PER_TOKEN / RATE, clock=clock) if policy else None, RATE)
    for i in range(n_ids):
        clock.now += step_s
        speech.feed(np.array([AUDIO_ID_OFFSET + i % 5000]))
    return speech.cuts


def test_deadline_tracks_playback_and_pauses_on_an_underrun():
    clock = FakeClock()
    deadline = Deadline(DeadlinePolicy(margin_s=0.1, min_tokens=10), SAMPLES_PER_TOKEN / RATE, clock=clock)
    assert not deadline.urgent() and deadline.slack() == 0.0  # nothing sent: the first chunk keeps its own size
    clock.now = 1.0
    deadline.sent(0.3, decode_s=0.15)
    assert deadline.slack() == pytest.approx(0.3) and not deadline.urgent()
    clock.now = 1.04  # 0.26 s left > 0.15 decode + 0.1 margin
    assert not deadline.urgent()
    clock.now = 1.06  # 0.24 s left: the next chunk must start now
    assert deadline.urgent()
    clock.now = 2.0  # the audio ran out at 1.3: playback resumes when the late chunk arrives
    deadline.sent(0.5, decode_s=0.2)
    assert deadline.plays_until == pytest.approx(2.5)


def test_without_a_deadline_the_schedule_alone_cuts():
    assert run(400, step_s=0.05, decode_s=0.2, policy=None) == [(25, False), (50, False), (100, False), (200, False)]


def test_a_stream_with_slack_keeps_the_schedule_boundaries():
    """Ids much faster than real time and a quick decoder: never urgent, the same boundaries as without a deadline."""
    assert run(400, step_s=0.001, decode_s=0.01, policy=DeadlinePolicy(0.1, 10)) == run(400, 0.001, 0.01, None)


def test_a_stream_short_of_time_cuts_early_and_never_below_min_tokens():
    # 30 ms per id (slower than the 23 ms of audio each id makes) and 0.2 s per decode: the 50-token chunk would
    # arrive after the first chunk's 0.58 s ran out.
    cuts = run(300, step_s=0.03, decode_s=0.2, policy=DeadlinePolicy(margin_s=0.1, min_tokens=10))
    assert cuts[0] == (25, False)  # the first chunk is due at once: its size is the schedule's
    assert cuts[1][1] and 10 <= cuts[1][0] < 50
    assert all(size >= 10 for size, _ in cuts)
    committed = sum(size for size, _ in cuts)  # ids past the lookahead wait for finish() only below min_tokens
    assert 300 - 20 - 10 < committed <= 300 - 20


def test_an_urgent_stream_waits_for_min_tokens():
    # Ids at 50 ms: urgent 8 ids after the first chunk, yet no chunk under 15 tokens.
    cuts = run(120, step_s=0.05, decode_s=0.05, policy=DeadlinePolicy(margin_s=0.1, min_tokens=15))
    assert cuts[1] == (15, True)
    assert all(size >= 15 for size, _ in cuts[1:])


def test_an_early_chunk_outlasts_its_decode():
    """Each decoder call costs about the same whatever its size: a chunk shorter than its decode loses ground."""
    cuts = run(200, step_s=0.01, decode_s=1.0, policy=DeadlinePolicy(margin_s=0.1, min_tokens=15))
    assert cuts[1] == (math.ceil(1.0 / (SAMPLES_PER_TOKEN / RATE)), True)  # 44 tokens = 1.02 s of audio


def test_deadline_policy_is_validated():
    with pytest.raises(ValueError, match="min_tokens"):
        DeadlinePolicy(margin_s=0.1, min_tokens=0).validate()
    with pytest.raises(ValueError, match="margin_s"):
        Deadline(DeadlinePolicy(margin_s=-1.0, min_tokens=10), 0.02)
