"""The slaney mel filterbank (librosa ``htk=False, norm="slaney"``) used by the vq06 and decoder front ends."""

from __future__ import annotations

import numpy as np

from stepaudio.audio.mel import hz_to_mel, mel_filterbank, mel_to_hz


def test_mel_scale_is_linear_below_1khz_and_log_above():
    assert np.isclose(hz_to_mel(1000.0), 15.0)
    assert np.isclose(hz_to_mel(200.0), 3.0)
    assert np.isclose(hz_to_mel(6400.0), 15.0 + 27.0)  # one log step of ln(6.4)/27 per mel above 1 kHz
    freqs = np.array([0.0, 123.4, 999.0, 1000.0, 4321.0, 11025.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs)), freqs, rtol=1e-12, atol=1e-9)


def test_filters_are_unit_area_triangles_peaking_at_their_centres():
    sr, n_fft, n_mels, fmax = 22050, 1024, 80, 8000
    bank = mel_filterbank(sr, n_fft, n_mels, 0, fmax)
    assert bank.shape == (80, 513) and bank.dtype == np.float32
    bin_hz = sr / n_fft
    centres = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(fmax), n_mels + 2))[1:-1]
    peaks = bank.argmax(axis=1) * bin_hz
    assert np.all(np.abs(peaks - centres) <= bin_hz)
    areas = bank.sum(axis=1) * bin_hz  # slaney norm: each triangle integrates to 1 over Hz
    np.testing.assert_allclose(areas[20:], 1.0, rtol=0.06)  # narrow low filters are under-sampled by the FFT grid
    assert np.all(bank[:, int(fmax / bin_hz) + 2 :] == 0)


def test_whisper_bank_shape():
    bank = mel_filterbank(16000, 400, 128)
    assert bank.shape == (128, 201)
    assert np.all(bank.max(axis=1) > 0)
