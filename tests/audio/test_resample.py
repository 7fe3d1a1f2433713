"""Resampler: band-limited accuracy, torchaudio-equivalent math, any rate pair, bit-exact streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stepaudio.audio import Resampler, resample


def dense_torchaudio_resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """torchaudio.functional.resample (sinc_interp_hann, width 6, rolloff 0.99) written out as a strided conv."""
    g = math.gcd(src, dst)
    orig, new = src // g, dst // g
    base = min(orig, new) * 0.99
    width = math.ceil(6 * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1)[:, None, None] / new + idx) * base
    t = t.clamp(-6, 6)
    window = torch.cos(t * math.pi / 12) ** 2
    t = t * math.pi
    kernel = (torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * base / orig).float()
    padded = torch.nn.functional.pad(torch.from_numpy(x)[None, None], (width, width + orig))
    out = torch.nn.functional.conv1d(padded, kernel, stride=orig).transpose(1, 2).reshape(-1)
    return out[: math.ceil(new * len(x) / orig)].numpy()


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.mark.parametrize("src,dst", [(8000, 16000), (44100, 16000), (48000, 16000), (16000, 22050), (22050, 16000)])
def test_sine_keeps_frequency_and_amplitude(src, dst):
    out = resample(tone(1000.0, src, 1.0), src, dst)
    assert len(out) == math.ceil(src * 1.0 * dst / src)
    middle = out[dst // 10 : -dst // 10]  # away from the zero-padded edges
    assert abs(dominant_frequency(middle, dst) - 1000.0) < 2.0
    assert abs(np.max(np.abs(middle)) - 0.5) < 0.005


def test_content_above_the_new_nyquist_is_removed():
    out = resample(tone(12000.0, 48000, 0.5), 48000, 16000)  # 12 kHz cannot exist at 16 kHz
    assert np.max(np.abs(out[800:-800])) < 0.01


def test_round_trip_error_is_small_in_the_speech_band():
    # the 6-crossing Hann filter (torchaudio's default) is flat to well under 1 % up to ~half of Nyquist
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (220, 1300, 2500, 3700))
    x = x.astype(np.float32)
    back = resample(resample(x, 16000, 48000), 48000, 16000)
    assert back.shape == x.shape
    assert np.max(np.abs(back - x)[400:-400]) < 2e-3 * np.max(np.abs(x))


@pytest.mark.parametrize("src,dst", [(44100, 16000), (8000, 16000), (16000, 22050), (11025, 16000)])
def test_matches_torchaudio_math(src, dst):
    x = np.random.default_rng(1).standard_normal(src // 2 + 13).astype(np.float32) * 0.1
    np.testing.assert_allclose(resample(x, src, dst), dense_torchaudio_resample(x, src, dst), atol=2e-6)


@pytest.mark.parametrize("src,dst", [(44100, 16000), (48000, 16000), (8000, 16000), (16000, 22050)])
def test_streamed_pieces_are_bit_identical_to_one_call(src, dst):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(src + 77).astype(np.float32) * 0.1
    stream, pieces, start = Resampler(src, dst), [], 0
    while start < len(x):
        size = int(rng.integers(1, 3000))
        pieces.append(stream.feed(x[start : start + size]))
        start += size
    pieces.append(stream.finish())
    assert np.array_equal(np.concatenate(pieces), resample(x, src, dst))


def test_awkward_rate_pair_stays_cheap():
    # gcd(383999, 16000) = 1: a dense polyphase kernel would need 16000 × 384291 taps (~25 GB)
    out = resample(np.ones(38400, dtype=np.float32), 383_999, 16000)
    assert len(out) == math.ceil(38400 * 16000 / 383_999)
    assert abs(float(np.median(out)) - 1.0) < 0.01


def test_same_rate_is_identity_and_stereo_is_per_channel():
    x = np.random.default_rng(3).standard_normal((2, 1000)).astype(np.float32)
    assert np.array_equal(resample(x, 16000, 16000), x)
    both = resample(x, 48000, 16000)
    assert both.shape == (2, 334)
    assert np.array_equal(both[1], resample(x[1], 48000, 16000))


def test_finished_stream_refuses_more_audio():
    stream = Resampler(48000, 16000)
    stream.feed(np.zeros(100, dtype=np.float32))
    stream.finish()
    with pytest.raises(ValueError, match="finished"):
        stream.feed(np.zeros(10, dtype=np.float32))
