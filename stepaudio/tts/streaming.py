"""Streaming synthesis: LLM ids in as they are generated, wave chunks out as soon as the decoder commits them.

The first chunk is small so the listener hears something early; later chunks grow (each ``growth`` times the last,
up to ``max_tokens``), because larger flow windows cost less per second of audio and the playback buffer has filled.
The overlap/cross-fade and decoder caches live in ``stepaudio.decoder.token2wav.Token2WavStream``.

Deadline cut (``Deadline``, opt-in): a chunk is due when the audio already sent finishes playing. Under load the
next scheduled chunk can need more ids than the stream can generate and decode before then (measured at 4 streams:
the second chunk, 50 ids, arrived 0.3–0.5 s after the first chunk's 0.31 s of audio ran out), so once the time
left falls to the last chunk's decode time plus a margin the stream cuts the chunk from the ids it has: at least
``min_tokens``, and at least as many as play longer than that decode takes (each decoder call costs about the same
whatever its size, so smaller chunks only fall further behind). A stream with slack keeps the schedule's sizes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stepaudio.tts.decoder_ids import decoder_tokens


@dataclass(frozen=True)
class ChunkSchedule:
    first_tokens: int = 25  # ≈0.6 s of speech
    growth: float = 2.0
    max_tokens: int = 200

    def validate(self) -> None:
        if self.first_tokens < 1 or self.max_tokens < self.first_tokens or not self.growth >= 1.0:
            raise ValueError("chunk schedule needs 1 ≤ first_tokens ≤ max_tokens and growth ≥ 1")

    def next(self, current: int) -> int:
        return min(self.max_tokens, max(current + 1, math.ceil(current * self.growth)))


@dataclass(frozen=True)
class DeadlinePolicy:
    """Chunk sizes by deadline: cut early once the time left is ≤ the last decode time + ``margin_s``, with at
    least ``min_tokens`` and at least the tokens whose audio outlasts that decode time."""

    margin_s: float  # no defaults here: the served ones are rendered (export/render_repository.py)
    min_tokens: int

    def validate(self) -> None:
        if self.margin_s < 0 or self.min_tokens < 1:
            raise ValueError("deadline policy needs margin_s ≥ 0 and min_tokens ≥ 1")


def token_seconds(config) -> float:
    """Seconds of audio per committed decoder token (a ``DecoderConfig``)."""
    return config.flow.mel_frames_for_tokens(1000) / 1000 * config.hift.samples_per_frame / config.hift.sampling_rate


class Deadline:
    """One stream's playback as its listener hears it (playback starts when the first chunk leaves and pauses when
    it runs out, as ``bench/playback.py`` counts underruns) and how long its last chunk took to decode (what the
    next one is expected to take). ``clock`` is injectable (monotonic seconds) so the decisions are testable
    without sleeping; ``token_s``: seconds of audio per token (``token_seconds``)."""

    def __init__(self, policy: DeadlinePolicy, token_s: float, clock: Callable[[], float] = time.monotonic):
        policy.validate()
        if token_s <= 0:
            raise ValueError("deadline needs token_s > 0")
        self.policy, self.token_s, self.clock = policy, token_s, clock
        self.plays_until: float | None = None  # None: nothing sent yet, the first chunk is due now
        self.decode_s = 0.0  # how long this stream's last chunk took from its cut to its audio

    def slack(self) -> float:
        """Seconds of sent audio not yet played (0 before the first chunk, negative once it ran out)."""
        return 0.0 if self.plays_until is None else self.plays_until - self.clock()

    def urgent(self) -> bool:
        """True when the next chunk must be cut now to arrive before the audio runs out. Before the first chunk:
        False (its size is ``first_tokens``)."""
        return self.plays_until is not None and self.slack() <= self.decode_s + self.policy.margin_s

    def min_cut_tokens(self) -> int:
        """The smallest early chunk: one whose audio lasts longer than decoding it takes (smaller ones lose ground:
        each decoder call costs about the same whatever its size)."""
        return max(self.policy.min_tokens, math.ceil(self.decode_s / self.token_s))

    def sent(self, seconds: float, decode_s: float) -> None:
        """A chunk of ``seconds`` of audio left now; it took ``decode_s`` to decode."""
        now = self.clock()
        self.plays_until = max(now, self.plays_until if self.plays_until is not None else now) + seconds
        self.decode_s = decode_s


class SpeechStream:
    """Feeds one utterance's LLM ids to a decoder stream whose ``chunk_tokens`` follows the schedule, cutting a
    chunk early when ``deadline`` (optional) says the listener's audio would run out first."""

    def __init__(self, decoder_stream, schedule: ChunkSchedule, deadline: Deadline | None = None,
                 sample_rate: int = 22050):
        schedule.validate()
        self.decoder_stream = decoder_stream
        self.schedule = schedule
        self.deadline, self.sample_rate = deadline, sample_rate
        decoder_stream.chunk_tokens = schedule.first_tokens
        self.planned = schedule.first_tokens  # the schedule's size for the next chunk (a deadline cut may be smaller)
        self.chunks_sent = 0
        self.cuts: list[tuple[int, bool]] = []  # (tokens, cut early by the deadline) per committed chunk

    def feed(self, llm_ids) -> np.ndarray:
        parts = []
        for token in decoder_tokens(llm_ids):
            stream = self.decoder_stream
            committed = stream.committed_tokens
            ready = len(stream.tokens) + 1 - committed - stream.lookahead_tokens  # committable with this token
            early = (self.deadline is not None and ready < self.planned and self.deadline.urgent()
                     and ready >= self.deadline.min_cut_tokens())
            stream.chunk_tokens = ready if early else self.planned
            started = self.deadline.clock() if self.deadline is not None else 0.0
            chunk = stream.feed(np.array([token], dtype=np.int64))
            if stream.committed_tokens != committed:
                self.cuts.append((stream.committed_tokens - committed, early))
                # The schedule grows from its own sizes: a deadline cut does not shrink the chunks after it.
                self.planned = self.schedule.next(self.planned)
                stream.chunk_tokens = self.planned
            if chunk.size:
                parts.append(chunk)
                if self.deadline is not None:
                    self.deadline.sent(chunk.size / self.sample_rate, self.deadline.clock() - started)
        self.chunks_sent += bool(parts)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        if not self.decoder_stream.tokens:
            raise ValueError("the TTS model produced no audio tokens")
        return self.decoder_stream.finish()
