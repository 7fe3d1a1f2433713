"""Prompt mel front end (reference ``matcha.audio.mel_spectrogram`` with the yaml's ``feat_extractor`` values).

22.05 kHz wave → reflect-pad (n_fft − hop)/2 each side → STFT (periodic Hann, no centring) → magnitude
√(re² + im² + 1e-9) → slaney mel filterbank → natural log of max(·, 1e-5) → (T, 80) with T = len // hop.
"""

from __future__ import annotations

import numpy as np
import torch

from stepaudio.audio.mel import mel_filterbank
from stepaudio.decoder.config import MelConfig


def prompt_mel(wave: np.ndarray, config: MelConfig) -> np.ndarray:
    """(T, num_mels) float32 log-mel of a mono float waveform at ``config.sampling_rate``."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"prompt wave must be 1-D mono samples, got shape {wave.shape}")
    if wave.dtype.kind != "f":
        raise ValueError(f"prompt wave must be float samples in [-1, 1], got dtype {wave.dtype}")
    pad = (config.n_fft - config.hop_size) // 2
    if wave.shape[0] <= pad:
        raise ValueError(f"prompt wave too short: {wave.shape[0]} samples, need more than {pad}")
    if not np.all(np.isfinite(wave)):
        raise ValueError("prompt wave contains NaN or infinity")
    signal = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).view(1, 1, -1)
    signal = torch.nn.functional.pad(signal, (pad, pad), mode="reflect").view(1, -1)
    window = torch.hann_window(config.win_size)
    spec = torch.stft(
        signal,
        config.n_fft,
        hop_length=config.hop_size,
        win_length=config.win_size,
        window=window,
        center=config.center,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    basis = torch.from_numpy(
        mel_filterbank(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
    )
    mel = torch.log(torch.clamp(basis @ magnitude[0], min=1e-5))
    return mel.T.contiguous().numpy()
