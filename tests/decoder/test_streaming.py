"""Streaming token2wav against the offline output with the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.decoder import source_noise
from tests.decoder.inputs import make_tokens, make_voice

N_TOKENS, FEED = 150, 17
VOICE = make_voice(7, 30, 60)


@pytest.fixture(scope="module")
def streamed(token2wav):
    tokens = make_tokens(7, N_TOKENS)
    stream = token2wav.stream(*VOICE, seed=11)
    chunks = [stream.feed(tokens[i : i + FEED]) for i in range(0, N_TOKENS, FEED)]
    chunks.append(stream.finish())
    return stream, chunks, token2wav(tokens, *VOICE, seed=11)


def test_audio_arrives_before_the_end(streamed):
    _, chunks, offline = streamed
    assert sum(len(c) for c in chunks[:-1]) > len(offline) // 2
    assert all(len(c) % 256 == 0 for c in chunks)
    assert sum(len(c) for c in chunks) == len(offline)


def test_chunked_vocoder_is_exact(streamed, token2wav):
    """Given the committed mel, the vocoder with context and carried source phase equals one offline HiFT call."""
    stream, chunks, _ = streamed
    frames = stream.mel.shape[1]
    (whole,) = token2wav.mel2wav([stream.mel], [stream.phase], [source_noise(11, 256 * frames)])
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-5, rtol=0)


def test_stream_is_close_to_offline(streamed):
    """Only the flow's windowing differs; measured on the tiny checkpoint: max |Δ| 0.0026, SNR 39 dB."""
    _, chunks, offline = streamed
    error = np.concatenate(chunks) - offline
    snr_db = 10 * np.log10(np.sum(offline**2) / np.sum(error**2))
    assert np.abs(error).max() < 0.01
    assert snr_db > 30


def test_stream_misuse_is_rejected(token2wav):
    stream = token2wav.stream(*VOICE, seed=0)
    with pytest.raises(ValueError, match="5120"):
        stream.feed([5120])
    with pytest.raises(ValueError, match="tokens is empty"):
        stream.finish()
    stream = token2wav.stream(*VOICE, seed=0)
    stream.feed(make_tokens(1, 5))
    assert len(stream.finish()) == 256 * 10
    with pytest.raises(ValueError, match="finished"):
        stream.feed([1])
    with pytest.raises(ValueError, match="vocoder_context_frames"):
        token2wav.stream(*VOICE, vocoder_context_frames=4)
