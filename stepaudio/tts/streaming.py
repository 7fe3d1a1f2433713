"""Streaming synthesis: LLM ids in as they are generated, wave chunks out as soon as the decoder commits them.

The first chunk is small so the listener hears something early; later chunks grow (each ``growth`` times the last,
up to ``max_tokens``), because larger flow windows cost less per second of audio and the playback buffer has filled.
The overlap/cross-fade and decoder caches live in ``stepaudio.decoder.token2wav.Token2WavStream``.
"""

from __future__ import annotations

import math
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


class SpeechStream:
    """Feeds one utterance's LLM ids to a decoder stream whose ``chunk_tokens`` follows the schedule."""

    def __init__(self, decoder_stream, schedule: ChunkSchedule):
        schedule.validate()
        self.decoder_stream = decoder_stream
        self.schedule = schedule
        decoder_stream.chunk_tokens = schedule.first_tokens
        self.chunks_sent = 0

    def feed(self, llm_ids) -> np.ndarray:
        parts = []
        for token in decoder_tokens(llm_ids):
            committed = self.decoder_stream.committed_tokens
            chunk = self.decoder_stream.feed(np.array([token], dtype=np.int64))
            if self.decoder_stream.committed_tokens != committed:
                self.decoder_stream.chunk_tokens = self.schedule.next(self.decoder_stream.chunk_tokens)
            if chunk.size:
                parts.append(chunk)
        self.chunks_sent += bool(parts)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        if not self.decoder_stream.tokens:
            raise ValueError("the TTS model produced no audio tokens")
        return self.decoder_stream.finish()
