"""The vq02 features, step for step like FunASR's ``WavFrontendOnline`` (its front end) fed 240 ms chunks.

Per chunk: samples left over from the previous chunk are prepended and every complete 25 ms frame (10 ms hop) gets a
Kaldi fbank (waveform ×32768, Hamming, dither per config); the fbank frames join a splice cache (which starts with 3
copies of the very first frame); low-frame-rate stacking emits one 560-dim frame (7 frames, hop 6) for every complete
window and keeps the rest for the next chunk; CMVN from ``am.mvn`` is applied. The final chunk pads its last window
with copies of the last frame. Reference quirks kept on purpose: if the final chunk brings so few frames that even the
padded window cannot start (fewer than 7 frames in the cache), they are dropped; a stream that ends on a chunk
boundary never pads at all.
"""

from __future__ import annotations

import math

import numpy as np

from stepaudio.audio.kaldi import frame_count, kaldi_fbank
from stepaudio.tokenizer.funasr_files import FrontendConfig

INT16_SCALE = 32768.0


class OnlineFrontend:
    def __init__(self, config: FrontendConfig, cmvn_shift: np.ndarray, cmvn_scale: np.ndarray):
        if cmvn_shift.shape[0] < config.feature_dim:
            raise ValueError(f"am.mvn has {cmvn_shift.shape[0]} dims; the LFR features have {config.feature_dim}")
        self.config = config
        self._shift = cmvn_shift[: config.feature_dim]
        self._scale = cmvn_scale[: config.feature_dim]
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet covered by a whole frame
        self._splice: np.ndarray | None = None  # fbank frames not yet consumed by LFR
        self._frames_done = 0  # fbank frames computed so far (selects the dither rows)

    def process(self, chunk: np.ndarray, is_final: bool) -> np.ndarray:
        """(T, 560) CMVN-normalised LFR features that this chunk completes (T may be 0)."""
        cfg = self.config
        wave = np.concatenate([self._pending, np.asarray(chunk, dtype=np.float32)])
        count = frame_count(wave.shape[0], cfg.frame_size, cfg.frame_shift, snip_edges=True)
        self._pending = wave[count * cfg.frame_shift :]
        if count == 0:
            if not is_final or self._splice is None:
                return self._empty()
            return self._lfr(self._splice, is_final=True)
        fbank = self._fbank(wave[: (count - 1) * cfg.frame_shift + cfg.frame_size])
        if self._splice is None:
            self._splice = np.repeat(fbank[:1], (cfg.lfr_m - 1) // 2, axis=0)
        frames = np.concatenate([self._splice, fbank])
        if frames.shape[0] < cfg.lfr_m:
            self._splice = frames
            return self._empty()
        return self._lfr(frames, is_final)

    def _fbank(self, wave: np.ndarray) -> np.ndarray:
        cfg = self.config
        scaled = wave * np.float32(INT16_SCALE) if cfg.upscale_samples else wave
        fbank = kaldi_fbank(
            scaled,
            cfg.sample_rate,
            num_mel_bins=cfg.n_mels,
            frame_length_ms=cfg.frame_length_ms,
            frame_shift_ms=cfg.frame_shift_ms,
            window_type=cfg.window,
            dither=cfg.dither,
            snip_edges=cfg.snip_edges,
            first_frame=self._frames_done,
        )
        self._frames_done += fbank.shape[0]
        return fbank

    def _lfr(self, frames: np.ndarray, is_final: bool) -> np.ndarray:
        """Stack ``lfr_m`` frames every ``lfr_n``; incomplete windows wait for more frames unless ``is_final``."""
        m, n = self.config.lfr_m, self.config.lfr_n
        total = frames.shape[0]
        windows = math.ceil((total - (m - 1) // 2) / n)
        stacked = []
        next_start = windows
        for i in range(windows):
            window = frames[i * n : i * n + m]
            if window.shape[0] < m:
                if not is_final:
                    next_start = i
                    break
                window = np.concatenate([window, np.repeat(frames[-1:], m - window.shape[0], axis=0)])
            stacked.append(window.reshape(-1))
        self._splice = frames[min(total - 1, next_start * n) :]
        if not stacked:
            return self._empty()
        lfr = np.stack(stacked).astype(np.float32)
        return ((lfr + self._shift) * self._scale).astype(np.float32)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.config.feature_dim), dtype=np.float32)
