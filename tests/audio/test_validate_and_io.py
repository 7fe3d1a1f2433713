"""One validation function for every waveform; file loading for CLI use."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from stepaudio.audio import MAX_INPUT_SECONDS, load_audio, to_mono, validate_waveform


@pytest.mark.parametrize(
    "wave,rate,message",
    [
        (np.zeros(0, dtype=np.float32), 16000, "empty"),
        (np.zeros((2, 0), dtype=np.float32), 16000, "empty"),
        (np.array([0.0, np.nan], dtype=np.float32), 16000, "NaN or Inf"),
        (np.array([0.0, np.inf], dtype=np.float32), 16000, "NaN or Inf"),
        (np.zeros(16000 * int(MAX_INPUT_SECONDS) + 1, dtype=np.float32), 16000, "limit"),
        (np.zeros(100, dtype=np.int16), 16000, "floating point"),
        (np.zeros((1, 2, 100), dtype=np.float32), 16000, "shape"),
        (np.zeros((48000, 2), dtype=np.float32), 16000, "transpose"),
        ([0.0, 0.1], 16000, "numpy array"),
        (np.zeros(100, dtype=np.float32), 0, "positive"),
        (np.zeros(100, dtype=np.float32), -16000, "positive"),
        (np.zeros(100, dtype=np.float32), 16000.5, "integer"),
        (np.zeros(100, dtype=np.float32), "16000", "integer"),
        (np.zeros(100, dtype=np.float32), True, "integer"),
        (np.zeros(100, dtype=np.float32), 10_000_000, "outside"),
    ],
)
def test_bad_input_is_a_value_error_that_says_why(wave, rate, message):
    with pytest.raises(ValueError, match=message):
        validate_waveform(wave, rate)


def test_valid_input_becomes_mono_float32():
    stereo = np.stack([np.full(100, 0.2), np.full(100, 0.4)])  # float64, (channels, samples)
    mono = validate_waveform(stereo, 44100)
    assert mono.dtype == np.float32 and mono.shape == (100,)
    assert np.allclose(mono, 0.3)
    assert validate_waveform(np.zeros(16000 * 120, dtype=np.float32), 16000, max_seconds=None).shape == (16000 * 120,)


def test_to_mono_averages_channels_and_keeps_mono():
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert np.allclose(to_mono(x), [0.5, 0.5])
    mono = x[0]
    assert to_mono(mono) is mono


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_load_audio_decodes_files_into_channels_first_float32(fmt, subtype):
    t = np.arange(8000) / 8000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.25 * np.sin(2 * np.pi * 300 * t)], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, stereo, 8000, format=fmt, subtype=subtype)
    buffer.seek(0)
    wave, rate = load_audio(buffer)
    assert rate == 8000 and wave.dtype == np.float32 and wave.shape[0] == 2
    tolerance = 1e-3 if subtype == "PCM_16" else 0.05
    assert abs(float(np.max(np.abs(wave[0]))) - 0.5) < tolerance
    assert abs(float(np.max(np.abs(wave[1]))) - 0.25) < tolerance


def test_load_audio_returns_1d_for_mono_and_rejects_garbage():
    wave, rate = load_audio("tests/data/speech_zh_8k.wav")
    assert rate == 8000 and wave.ndim == 1 and len(wave) > 3 * 8000
    with pytest.raises(ValueError, match="cannot decode"):
        load_audio(io.BytesIO(b"not audio at all"))
