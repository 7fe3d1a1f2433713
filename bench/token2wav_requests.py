"""The token2wav bench workload, shared by ``bench_token2wav.py``, ``flops.py``, ``report.py`` and the profiling
scripts: random requests of a given length with a 3 s voice prompt, and one timed batch through a decoder."""

from __future__ import annotations

import time

import numpy as np

from stepaudio.decoder import Token2WavBase, Token2WavRequest

PROMPT_SECONDS = 3.0
TOKENS_PER_SECOND = 41.667


def requests_for(batch: int, seconds: float, seed: int = 0) -> list[Token2WavRequest]:
    rng = np.random.default_rng(seed)
    n_tokens, n_prompt = round(seconds * TOKENS_PER_SECOND), round(PROMPT_SECONDS * TOKENS_PER_SECOND)
    n_prompt_frames = int(PROMPT_SECONDS * 22050) // 256
    return [
        Token2WavRequest(
            rng.integers(0, 5120, n_tokens),
            rng.integers(0, 5120, n_prompt),
            rng.standard_normal((n_prompt_frames, 80)).astype(np.float32) - 5,
            rng.standard_normal(192).astype(np.float32),
        )
        for _ in range(batch)
    ]


def run(decoder: Token2WavBase, requests, noises):
    """(seconds in the flow, seconds in the vocoder, waves) for one padded batch."""
    start = time.perf_counter()
    mels = decoder.token2mel(requests, [n.flow for n in noises])
    middle = time.perf_counter()
    waves = decoder.mel2wav(mels, [n.source_phase for n in noises], [n.source_noise for n in noises])
    return middle - start, time.perf_counter() - middle, waves
