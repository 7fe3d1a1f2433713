"""Whisper's 128-bin log-mel spectrogram (``whisper.log_mel_spectrogram(x, n_mels=128)``), the vq06 input.

16 kHz, centred STFT (reflect padding) with a 400-point periodic Hann window every 160 samples, power spectrum with
the last frame dropped (so ``T = samples // 160``), slaney mel filters, log10 floored at 1e-10, values below
``max − 8`` raised to it, then ``(x + 4) / 4``. The ``max`` is over the whole clip, so the features of a clip
depend on all of it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from stepaudio.audio.mel import mel_filterbank

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 128


@lru_cache(maxsize=1)
def _filters() -> np.ndarray:
    filters = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS)
    filters.setflags(write=False)  # cached and shared
    return filters


def log_mel_spectrogram(wave: np.ndarray) -> np.ndarray:
    """(128, samples // 160) float32 features of a 16 kHz mono clip longer than 200 samples."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.shape[0] <= N_FFT // 2:
        raise ValueError(f"whisper log-mel needs a mono clip of more than {N_FFT // 2} samples; got {wave.shape}")
    padded = np.pad(wave, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:-1]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    power = (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).astype(np.float32)
    log_spec = np.log10(np.maximum(_filters() @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
