"""Level normalisation and prompt silence trimming, as the reference applies them before tokenizing (R: utils.py)."""

from __future__ import annotations

import math

import numpy as np

PEAK_TARGET = 0.999
PEAK_FLOOR = 0.01  # quieter clips are scaled as if their peak were this, not blown up to full scale

TRIM_TOP_DB = 20.0
TRIM_FRAME = 512
TRIM_HOP = 128
TRIM_KEEP_BEFORE_SECONDS = 0.05
TRIM_KEEP_AFTER_SECONDS = 0.22
TRIM_LENGTH_QUANTUM = 240  # voiced length is rounded up to whole 15 ms (16 kHz) steps


def energy_normalize(wave: np.ndarray) -> np.ndarray:
    """Scale so the peak is 0.999 (reference ``energy_norm_fn``)."""
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    return (wave / max(peak, PEAK_FLOOR) * PEAK_TARGET).astype(np.float32)


def voiced_span(wave: np.ndarray, top_db: float = TRIM_TOP_DB) -> tuple[int, int]:
    """[start, end) sample span of frames within ``top_db`` of the loudest frame (``librosa.effects.trim``).

    Frame RMS uses centred 512-sample frames every 128 samples with zero padding; a frame is voiced when its level
    relative to the loudest frame exceeds −top_db. An all-zero signal counts as voiced throughout, as in librosa.
    """
    wave = np.asarray(wave, dtype=np.float64)
    padded = np.pad(wave, TRIM_FRAME // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, TRIM_FRAME)[::TRIM_HOP]
    power = np.mean(frames**2, axis=1)
    floor = 1e-10  # librosa amplitude_to_db amin 1e-5, squared
    level_db = 10.0 * np.log10(np.maximum(floor, power)) - 10.0 * np.log10(max(floor, float(power.max())))
    voiced = np.flatnonzero(level_db > -top_db)
    if voiced.size == 0:
        return 0, 0
    return int(voiced[0] * TRIM_HOP), min(wave.shape[0], int((voiced[-1] + 1) * TRIM_HOP))


def trim_silence(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Reference ``trim_silence``: keep 0.05 s before the voiced onset (zero-padding if the clip starts later than
    that) and make the clip ``ceil(voiced / 240) · 240 + 0.27 s`` long (cropping or zero-padding the end)."""
    wave = np.asarray(wave, dtype=np.float32)
    start, end = voiced_span(wave)
    steps = math.ceil((end - start) / TRIM_LENGTH_QUANTUM)
    first = start - int(TRIM_KEEP_BEFORE_SECONDS * sample_rate)
    wave = wave[first:] if first > 0 else np.pad(wave, (-first, 0))
    length = int(steps * TRIM_LENGTH_QUANTUM + (TRIM_KEEP_BEFORE_SECONDS + TRIM_KEEP_AFTER_SECONDS) * sample_rate)
    return wave[:length] if length < wave.shape[0] else np.pad(wave, (0, length - wave.shape[0]))
