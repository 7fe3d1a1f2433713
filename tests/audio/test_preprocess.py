"""Energy normalisation and prompt silence trimming as the reference does them (utils.py)."""

from __future__ import annotations

import math

import numpy as np

from stepaudio.audio import energy_normalize, trim_silence
from stepaudio.audio.preprocess import voiced_span

RATE = 16000


def burst(onset: int, length: int, total: int) -> np.ndarray:
    wave = np.zeros(total, dtype=np.float32)
    wave[onset : onset + length] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(length) / RATE)
    return wave


def test_energy_normalize_sets_the_peak_to_0_999():
    wave = np.array([0.1, -0.25, 0.2], dtype=np.float32)
    out = energy_normalize(wave)
    assert np.isclose(np.max(np.abs(out)), 0.999)
    assert np.allclose(out / out[1], wave / wave[1])


def test_quiet_clips_are_not_blown_up_to_full_scale():
    out = energy_normalize(np.array([0.001, -0.002], dtype=np.float32))
    assert np.allclose(out, np.array([0.001, -0.002]) / 0.01 * 0.999)


def test_voiced_span_finds_the_burst_within_a_frame():
    start, end = voiced_span(burst(8000, 16000, 40000))
    assert abs(start - 8000) <= 512 and abs(end - 24000) <= 512


def test_trim_keeps_50ms_before_onset_and_sets_the_reference_length():
    wave = burst(8000, 16000, 40000)
    start, end = voiced_span(wave)
    out = trim_silence(wave, RATE)
    assert len(out) == math.ceil((end - start) / 240) * 240 + int(0.27 * RATE)
    assert np.array_equal(out[:100], wave[start - 800 : start - 700])  # starts 0.05 s before the onset
    assert np.all(out[end - start + 800 :] == 0)  # tail is silence (kept or zero-padded)


def test_trim_left_pads_when_speech_starts_right_away():
    wave = burst(0, 8000, 20000)
    out = trim_silence(wave, RATE)
    start, _ = voiced_span(wave)
    assert np.all(out[: 800 - start] == 0)
    assert np.array_equal(out[800 - start : 800 - start + 1000], wave[:1000])


def test_all_zero_clip_counts_as_voiced_like_librosa():
    assert voiced_span(np.zeros(1000, dtype=np.float32)) == (0, 1000)
