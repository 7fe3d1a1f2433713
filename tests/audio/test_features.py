"""Kaldi fbank (vq02, CAM++) and Whisper log-mel (vq06): frame counts, where a tone's energy lands, dither."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.audio import kaldi_fbank, log_mel_spectrogram
from stepaudio.audio.kaldi import FLOAT32_EPS, frame_count
from stepaudio.audio.mel import hz_to_mel


def tone(freq: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


@pytest.mark.parametrize("samples", [400, 401, 559, 560, 561, 16000, 3840 + 240])
def test_snip_edges_frame_counts_follow_kaldi(samples):
    wave = np.random.default_rng(0).standard_normal(samples).astype(np.float32)
    assert kaldi_fbank(wave, 16000).shape == (1 + (samples - 400) // 160, 80)
    assert kaldi_fbank(wave, 16000, snip_edges=False).shape == ((samples + 80) // 160, 80)
    assert frame_count(samples, 400, 160) == 1 + (samples - 400) // 160


def test_too_short_for_a_frame_gives_no_frames():
    assert kaldi_fbank(np.ones(399, dtype=np.float32), 16000).shape == (0, 80)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_tone_energy_lands_in_the_htk_mel_bin_around_it(freq):
    feats = kaldi_fbank(tone(freq) * 32768, 16000, window_type="hamming")
    # bins are equally spaced on 1127·ln(1 + f/700) between 20 Hz and 8 kHz; bin b is centred at low + (b+1)·delta
    def htk(f):
        return 1127.0 * np.log1p(f / 700.0)

    delta = (htk(8000.0) - htk(20.0)) / 81
    expected = (htk(freq) - htk(20.0)) / delta - 1
    assert abs(int(np.argmax(feats.mean(axis=0))) - expected) <= 1.0


def test_silence_without_dither_sits_on_the_log_floor_and_dither_lifts_it():
    silence = np.zeros(4000, dtype=np.float32)
    assert np.allclose(kaldi_fbank(silence, 16000), np.log(FLOAT32_EPS))
    dithered = kaldi_fbank(silence, 16000, dither=1.0)
    assert np.all(dithered > np.log(FLOAT32_EPS) + 5)


def test_dither_is_reproducible_and_indexed_by_absolute_frame():
    wave = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 100
    whole = kaldi_fbank(wave, 16000, window_type="hamming", dither=1.0)
    assert np.array_equal(whole, kaldi_fbank(wave, 16000, window_type="hamming", dither=1.0))
    # a stream that starts at frame 37 (sample 37·160) reproduces rows 37… of the one-shot features
    tail = kaldi_fbank(wave[37 * 160 :], 16000, window_type="hamming", dither=1.0, first_frame=37)
    np.testing.assert_allclose(tail, whole[37 : 37 + len(tail)], rtol=0, atol=1e-5)


def test_whisper_log_mel_frames_range_and_tone_bin():
    wave = tone(1000.0, seconds=2.0) + 0.001 * np.random.default_rng(2).standard_normal(32000).astype(np.float32)
    feats = log_mel_spectrogram(wave)
    assert feats.shape == (128, 32000 // 160)
    assert feats.max() - feats.min() <= 2.0 + 1e-6  # log10 floored at max − 8, then divided by 4
    # slaney mel bins are equally spaced on hz_to_mel from 0 to 8 kHz; the tone's bin is the one centred nearest
    centres = np.linspace(0, hz_to_mel(8000.0), 130)[1:-1]
    assert int(np.argmax(feats.mean(axis=1))) == int(np.argmin(np.abs(centres - hz_to_mel(1000.0))))


def test_whisper_log_mel_depends_on_the_whole_clip():
    wave = tone(500.0, seconds=1.0)
    louder_later = np.concatenate([wave, 4 * wave])
    # the first second's features change when a louder second follows (clip-wide max normalisation)
    assert not np.allclose(log_mel_spectrogram(wave), log_mel_spectrogram(louder_later)[:, :100])
