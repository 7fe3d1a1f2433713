"""The one check every waveform passes before the library touches it.

Waveforms are float arrays in [-1, 1]: 1-D ``(samples,)`` or 2-D ``(channels, samples)`` (the layout torchaudio and
the reference use). Anything else is refused with a ``ValueError`` that says what was wrong, so serving adapters can
return it to the client as an invalid-argument error.
"""

from __future__ import annotations

import numpy as np

MAX_INPUT_SECONDS = 60.0  # longest clip the tokenizer and speaker encoder accept in one call
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8


def validate_sample_rate(sample_rate) -> int:
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, (int, np.integer, float, np.floating)):
        raise ValueError(f"sample rate must be an integer number of Hz; got {sample_rate!r}")
    if not float(sample_rate).is_integer():
        raise ValueError(f"sample rate must be an integer number of Hz; got {sample_rate!r}")
    rate = int(sample_rate)
    if rate <= 0:
        raise ValueError(f"sample rate must be positive; got {rate}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return rate


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels of a ``(channels, samples)`` array (the reference mixes down the same way)."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise ValueError(f"expected a (samples,) or (channels, samples) waveform; got shape {wave.shape}")
    return wave.mean(axis=0, dtype=np.float64).astype(wave.dtype) if wave.shape[0] > 1 else wave[0]


def validate_waveform(wave, sample_rate, max_seconds: float | None = MAX_INPUT_SECONDS) -> np.ndarray:
    """Check ``wave`` and return it as a mono float32 array; ``max_seconds=None`` lifts the length limit."""
    rate = validate_sample_rate(sample_rate)
    if not isinstance(wave, np.ndarray):
        raise ValueError(f"waveform must be a numpy array; got {type(wave).__name__}")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(
            f"waveform must be floating point in [-1, 1]; got dtype {wave.dtype} "
            "(divide 16-bit PCM by 32768 first)"
        )
    if wave.ndim not in (1, 2):
        raise ValueError(f"expected a (samples,) or (channels, samples) waveform; got shape {wave.shape}")
    if wave.ndim == 2 and not 1 <= wave.shape[0] <= MAX_CHANNELS:
        raise ValueError(
            f"expected (channels, samples) with 1..{MAX_CHANNELS} channels; got shape {wave.shape} "
            "(transpose (samples, channels) arrays)"
        )
    if wave.shape[-1] == 0:
        raise ValueError("waveform is empty")
    # The length is checked from the shape before any pass over the samples: an oversized clip costs nothing.
    seconds = wave.shape[-1] / rate
    if max_seconds is not None and seconds > max_seconds:
        raise ValueError(f"waveform is {seconds:.2f} s long; the limit is {max_seconds:g} s")
    if not np.all(np.isfinite(wave)):
        raise ValueError("waveform contains NaN or Inf samples")
    return np.ascontiguousarray(to_mono(wave), dtype=np.float32)
