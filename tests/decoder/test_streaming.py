"""Streaming token2wav against the offline output with the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.decoder import flow_noise, source_noise
from stepaudio.decoder.hift import carried_phase, phase_at, phase_cycles
from stepaudio.decoder.token2wav import NoiseTape
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


@pytest.mark.parametrize("draw, tape_for, channels", [(flow_noise, NoiseTape.flow, 80), (source_noise, NoiseTape.source, 9)])
def test_noise_tape_reads_equal_one_whole_draw(draw, tape_for, channels):
    """Forward reads (overlapping, gapped, empty) equal the columns of one draw from sample 0."""
    whole = draw(5, 3000, channels)
    tape = tape_for(5, channels)
    for start, stop in ((0, 10), (4, 60), (60, 60), (200, 450), (300, 420), (1000, 3000)):
        np.testing.assert_array_equal(tape.read(start, stop), whole[:, start:stop])
    with pytest.raises(ValueError, match="forward"):
        tape.read(999, 1200)


def test_phase_summed_chunk_by_chunk_equals_the_sum_from_frame_0(token2wav):
    f0 = np.random.default_rng(0).uniform(0, 400, 5000).astype(np.float32)
    start = np.random.default_rng(1).uniform(-np.pi, np.pi, 9).astype(np.float32)
    cycles = np.zeros(9)
    for lo, hi in ((0, 7), (7, 1500), (1500, 1500), (1500, 5000)):
        cycles = phase_cycles(f0[lo:hi], token2wav.config.hift, cycles)
    np.testing.assert_allclose(phase_at(start, cycles), carried_phase(start, f0, token2wav.config.hift), atol=1e-5)


def test_stream_state_does_not_grow_with_its_position(token2wav):
    """Per-chunk work is O(chunk): the noise, mel and f0 a stream holds stay within one window however far it runs
    (their size after 100 and after 240 ids is the same), and its chunks still equal one vocoder call."""
    tokens = make_tokens(3, 240)
    options = dict(chunk_tokens=20, lookahead_tokens=5, max_window_tokens=45)
    stream = token2wav.stream(*VOICE, seed=4, **options)
    held = {}
    chunks = []
    for i in range(0, 240, 20):
        chunks.append(stream.feed(tokens[i : i + 20]))
        if i + 20 in (100, 240):
            held[i + 20] = (stream.flow_tape._held.shape[0], stream.source_tape._held.shape[0],
                            stream.mel_tail.shape[1], stream.f0_tail.shape[0])
    chunks.append(stream.finish())
    assert held[100] == held[240], held
    assert stream.tail_start > 0 and stream.phase_frame > 0
    whole = token2wav.mel2wav([stream.mel], [stream.phase], [source_noise(4, 256 * stream.mel.shape[1])])[0]
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-5, rtol=0)


def test_deadline_cut_stream_stays_close_to_offline(token2wav):
    """Chunks cut early by the deadline (a fake clock: ids slower than real time, so the stream is always short of
    time) change only where the flow windows fall: same length, the same bound to the offline audio as above."""
    from stepaudio.tokenizer.ids import AUDIO_ID_OFFSET
    from stepaudio.tts.streaming import ChunkSchedule, Deadline, DeadlinePolicy, SpeechStream, token_seconds

    now = [0.0]
    tokens = make_tokens(7, N_TOKENS)
    deadline = Deadline(DeadlinePolicy(margin_s=0.1, min_tokens=10), token_seconds(token2wav.config), clock=lambda: now[0])
    speech = SpeechStream(token2wav.stream(*VOICE, seed=11, chunk_tokens=25), ChunkSchedule(25, 2.0, 200), deadline,
                          token2wav.sample_rate)
    chunks = []
    for token in tokens:
        now[0] += 0.05
        chunks.append(speech.feed([AUDIO_ID_OFFSET + int(token)]))
    chunks.append(speech.finish())
    assert any(early for _, early in speech.cuts), "the fake clock must make the stream cut early"
    offline = token2wav(tokens, *VOICE, seed=11)
    joined = np.concatenate(chunks)
    assert joined.size == offline.size
    error = joined - offline
    assert np.abs(error).max() < 0.01
    assert 10 * np.log10(np.sum(offline**2) / np.sum(error**2)) > 30
