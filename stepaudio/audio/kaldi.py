"""Kaldi-compatible log mel filterbank (``compute-fbank-feats`` / ``torchaudio.compliance.kaldi.fbank``).

Two front ends use it: the vq02 Paraformer (waveform ×32768, Hamming window, dither from its config) and CAM++
(float waveform, Povey window, no dither). Per frame: optional dither, DC removal, pre-emphasis 0.97 (the first
sample pre-emphasises against itself), window, zero-pad to a power of two, power spectrum, HTK-mel triangular
filters between 20 Hz and Nyquist, natural log floored at float32 epsilon.

Dither: Kaldi draws fresh Gaussian noise on every call, which makes features (and the reference's vq02 codes)
vary from run to run. Here frame ``k`` of a signal always gets row ``k mod 1024`` of one fixed N(0, 1) table, so
features are reproducible and a stream that passes the absolute index of its first frame (``first_frame``) gets
exactly the features of one call over the whole signal.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)
DITHER_TABLE_FRAMES = 1024
DITHER_SEED = 0
WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")


def _frozen(array: np.ndarray) -> np.ndarray:
    """Cached tables are shared between callers and threads: make accidental writes fail."""
    array.setflags(write=False)
    return array


def frame_count(num_samples: int, window_size: int, window_shift: int, snip_edges: bool = True) -> int:
    """Frames Kaldi produces: ``1 + (n − size) // shift`` with snip_edges (0 if shorter), else ``(n + shift/2) // shift``."""
    if snip_edges:
        return 0 if num_samples < window_size else 1 + (num_samples - window_size) // window_shift
    return (num_samples + window_shift // 2) // window_shift


def mel_scale(freq):
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_freq: float = 20.0, high_freq: float = 0.0):
    """(num_bins, fft_size // 2 + 1) triangles equally spaced on the HTK mel scale; the Nyquist bin weighs 0."""
    nyquist = 0.5 * sample_rate
    high = nyquist + high_freq if high_freq <= 0.0 else high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise ValueError(f"bad mel range low={low_freq} high={high} for {sample_rate} Hz")
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    fft_mel = mel_scale(sample_rate / fft_size * np.arange(fft_size // 2))[None, :]
    banks = np.maximum(0.0, np.minimum((fft_mel - left) / (center - left), (right - fft_mel) / (right - center)))
    return _frozen(np.pad(banks, ((0, 0), (0, 1))).astype(np.float32))


@lru_cache(maxsize=8)
def feature_window(window_type: str, size: int) -> np.ndarray:
    n = np.arange(size, dtype=np.float64)
    cosine = np.cos(2 * np.pi * n / (size - 1))
    if window_type == "hamming":
        window = 0.54 - 0.46 * cosine
    elif window_type == "hanning":
        window = 0.5 - 0.5 * cosine
    elif window_type == "povey":
        window = (0.5 - 0.5 * cosine) ** 0.85
    elif window_type == "rectangular":
        window = np.ones(size)
    elif window_type == "blackman":
        window = 0.42 - 0.5 * cosine + 0.08 * np.cos(4 * np.pi * n / (size - 1))
    else:
        raise ValueError(f"unknown window type {window_type!r}; expected one of {WINDOW_TYPES}")
    return _frozen(window.astype(np.float32))


@lru_cache(maxsize=4)
def dither_table(window_size: int) -> np.ndarray:
    return _frozen(np.random.default_rng(DITHER_SEED).standard_normal((DITHER_TABLE_FRAMES, window_size)).astype(np.float32))


def _frames(wave: np.ndarray, size: int, shift: int, snip_edges: bool) -> np.ndarray:
    count = frame_count(wave.shape[0], size, shift, snip_edges)
    if count == 0:
        return np.zeros((0, size), dtype=np.float32)
    if not snip_edges:
        # frame k is centred on k·shift + shift/2; the signal is mirrored at both ends (Kaldi ExtractWindow)
        pad = size // 2 - shift // 2
        tail = (count - 1) * shift + size - pad - wave.shape[0]
        wave = np.concatenate([wave[:pad][::-1], wave, wave[::-1][: max(tail, 0)]])
    return np.lib.stride_tricks.sliding_window_view(wave, size)[: (count - 1) * shift + 1 : shift].copy()


def kaldi_fbank(
    wave: np.ndarray,
    sample_rate: int,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    window_type: str = "povey",
    dither: float = 0.0,
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    snip_edges: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    first_frame: int = 0,
) -> np.ndarray:
    """(frames, num_mel_bins) float32 log mel energies of a mono waveform (any scale; Kaldi tools use ×32768)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"kaldi_fbank takes a mono (samples,) waveform; got shape {wave.shape}")
    size = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    fft_size = 1 << (size - 1).bit_length()
    frames = _frames(wave, size, shift, snip_edges)
    if dither != 0.0 and frames.shape[0]:
        rows = (first_frame + np.arange(frames.shape[0])) % DITHER_TABLE_FRAMES
        frames += np.float32(dither) * dither_table(size)[rows]
    if remove_dc_offset:
        frames -= frames.mean(axis=1, keepdims=True)
    if preemphasis != 0.0:
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames -= np.float32(preemphasis) * previous
    frames *= feature_window(window_type, size)
    power = (np.abs(np.fft.rfft(frames, n=fft_size, axis=1)) ** 2).astype(np.float32)
    energies = power @ kaldi_mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq).T
    return np.log(np.maximum(energies, FLOAT32_EPS)).astype(np.float32)
