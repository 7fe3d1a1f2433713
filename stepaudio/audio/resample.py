"""Band-limited resampling between any two integer rates, one-shot or streamed.

The math is torchaudio's ``Resample`` with its defaults (Hann-windowed sinc, 6 zero crossings, roll-off 0.99), which
the reference uses to bring prompt and chat audio to 16 kHz. Unlike the reference, upsampling (8 kHz → 16 kHz) is
allowed: it is the same polyphase filter.

With ``g = gcd(src, dst)``, ``orig = src / g`` input samples map to ``new = dst / g`` output samples per block, and
output block ``j`` is ``kernel @ x[j·orig − width : j·orig + orig + width]`` (zeros outside the signal). A stream can
therefore emit block ``j`` as soon as that input span has arrived. Blocks are computed in groups aligned to absolute
block numbers, so feeding the audio in any pieces performs exactly the same arithmetic as one call and the outputs
are bit-identical.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from stepaudio.audio.validate import validate_sample_rate

ZERO_CROSSINGS = 6
ROLLOFF = 0.99
GROUP_SECONDS = 0.02  # input span computed per group: the extra latency a stream pays for bit-exactness


@lru_cache(maxsize=32)
def _polyphase_kernel(src_rate: int, dst_rate: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Compact polyphase filter: (taps (new, 2·width + 1) float32, first tap offset per phase, width, orig, new).

    torchaudio's dense kernel has ``2·width + orig`` taps per phase, but every tap outside the ``2·width + 1`` around
    the phase position is exactly zero in float32; keeping only those makes unusual rate pairs (e.g. 44 101 Hz,
    where ``orig`` stays huge after the gcd) cost ``O(width)`` per output sample instead of ``O(orig)``.
    """
    g = math.gcd(src_rate, dst_rate)
    orig, new = src_rate // g, dst_rate // g
    base = min(orig, new) * ROLLOFF
    width = math.ceil(ZERO_CROSSINGS * orig / base)
    offsets = (np.arange(new, dtype=np.int64) * orig) // new
    taps = (offsets[:, None] + np.arange(2 * width + 1)[None, :] - width).astype(np.float64) / orig
    # torchaudio builds the output phase offsets in float32 before mixing them with the float64 tap grid
    phases = (np.arange(0, -new, -1, dtype=np.float32) / np.float32(new)).astype(np.float64)
    t = np.clip((phases[:, None] + taps) * base, -ZERO_CROSSINGS, ZERO_CROSSINGS)
    window = np.cos(t * math.pi / ZERO_CROSSINGS / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = (sinc * window * (base / orig)).astype(np.float32)
    kernel.setflags(write=False)  # shared by every stream of this rate pair
    offsets.setflags(write=False)
    return kernel, offsets, width, orig, new


class Resampler:
    """Streaming resampler for one mono signal: ``feed`` returns the output that is final, ``finish`` the rest."""

    def __init__(self, src_rate: int, dst_rate: int):
        self.src_rate = validate_sample_rate(src_rate)
        self.dst_rate = validate_sample_rate(dst_rate)
        self._identity = self.src_rate == self.dst_rate
        if not self._identity:
            self._kernel, self._offsets, self._width, self._orig, self._new = _polyphase_kernel(
                self.src_rate, self.dst_rate
            )
            self._span = 2 * self._width + self._orig  # padded input one block reads
            self._group = max(1, round(GROUP_SECONDS * self.src_rate / self._orig))
            # the zero-padded input from absolute padded index ``_next_block · orig`` on (padding = width zeros)
            self._buffer = np.zeros(self._width, dtype=np.float32)
        self._next_block = 0
        self._input_length = 0
        self._finished = False

    def feed(self, wave: np.ndarray) -> np.ndarray:
        if self._finished:
            raise ValueError("resampler stream already finished")
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"resampler streams take mono (samples,) arrays; got shape {wave.shape}")
        self._input_length += wave.shape[0]
        if self._identity:
            return wave.copy()
        self._buffer = np.concatenate([self._buffer, wave])
        return self._emit(last_block=None)

    def finish(self) -> np.ndarray:
        if self._finished:
            raise ValueError("resampler stream already finished")
        self._finished = True
        if self._identity:
            return np.zeros(0, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, np.zeros(self._width + self._orig, dtype=np.float32)])
        total_blocks = self._input_length // self._orig + 1
        target_length = math.ceil(self._new * self._input_length / self._orig)
        produced = self._next_block * self._new
        out = self._emit(last_block=total_blocks)
        return out[: max(0, target_length - produced)]

    def _emit(self, last_block: int | None) -> np.ndarray:
        """Compute whole groups of blocks; with ``last_block`` (end of stream) also the final partial group."""
        outputs = []
        while True:
            count = self._group if last_block is None else min(self._group, last_block - self._next_block)
            span = (count - 1) * self._orig + self._span
            if count <= 0 or span > self._buffer.shape[0]:
                break
            windows = np.lib.stride_tricks.sliding_window_view(self._buffer[:span], self._kernel.shape[1])
            starts = np.arange(count)[:, None] * self._orig + self._offsets[None, :]
            outputs.append((windows[starts] * self._kernel).sum(axis=-1).reshape(-1))
            self._buffer = self._buffer[count * self._orig :]
            self._next_block += count
        return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)


def resample(wave: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a ``(samples,)`` or ``(channels, samples)`` float array; output length ``ceil(n · dst / src)``."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        return np.stack([resample(channel, src_rate, dst_rate) for channel in wave])
    resampler = Resampler(src_rate, dst_rate)
    return np.concatenate([resampler.feed(wave), resampler.finish()])
