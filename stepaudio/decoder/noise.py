"""Seeded decoder noise (numpy only, so orchestration code draws it without importing torch): the flow's initial
noise, the sine source's harmonic phases and its additive noise, each time-major from its own stream of one seed
(see ``stepaudio.decoder.token2wav`` for why)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stepaudio.decoder.config import DecoderConfig

_FLOW_STREAM, _PHASE_STREAM, _SOURCE_STREAM = 0, 1, 2


def mel_frames_for_tokens(n_tokens: int, config: DecoderConfig | None = None) -> int:
    """Target mel frames for ``n_tokens`` decoder ids: int(n / 41.667 × 22050 / 256) for the published config."""
    return (config or DecoderConfig()).flow.mel_frames_for_tokens(int(n_tokens))


def flow_noise_shape(n_prompt_frames: int, n_tokens: int, config: DecoderConfig | None = None) -> tuple[int, int]:
    """(80, prompt mel frames + target mel frames): the flow noise one request needs."""
    config = config or DecoderConfig()
    return (config.flow.output_size, int(n_prompt_frames) + mel_frames_for_tokens(n_tokens, config))


def source_noise_shape(n_mel_frames: int, config: DecoderConfig | None = None) -> tuple[int, int]:
    """(9, 256 × mel frames): the vocoder's additive source noise for ``n_mel_frames`` frames."""
    config = config or DecoderConfig()
    return (config.hift.n_harmonic_channels, int(n_mel_frames) * config.hift.samples_per_frame)


def _stream(seed: int, which: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), which])


def flow_noise(seed: int, n_frames: int, channels: int = 80) -> np.ndarray:
    """(channels, n_frames) standard normal; the first k frames do not depend on n_frames."""
    return np.ascontiguousarray(_stream(seed, _FLOW_STREAM).standard_normal((n_frames, channels), np.float32).T)


def source_noise(seed: int, n_samples: int, harmonics: int = 9) -> np.ndarray:
    """(harmonics, n_samples) standard normal; the first k samples do not depend on n_samples."""
    return np.ascontiguousarray(_stream(seed, _SOURCE_STREAM).standard_normal((n_samples, harmonics), np.float32).T)


def source_phase(seed: int, harmonics: int = 9) -> np.ndarray:
    """(harmonics,) uniform in [−π, π), the fundamental's set to 0 (as the reference's SineGen)."""
    phase = _stream(seed, _PHASE_STREAM).uniform(-np.pi, np.pi, harmonics).astype(np.float32)
    phase[0] = 0.0
    return phase


class NoiseTape:
    """Columns of one seed's time-major normal draw (``flow_noise`` / ``source_noise``), read forward: the draw
    continues from where the last read ended and columns before the last read's start are dropped, so a stream that
    reads windows whose start never moves back pays O(window) per read, not O(position)."""

    def __init__(self, seed: int, which: int, channels: int):
        self._rng = _stream(seed, which)
        self._channels = channels
        self._start = 0  # column of self._held[0]
        self._held = np.zeros((0, channels), np.float32)  # time-major, as drawn

    @classmethod
    def flow(cls, seed: int, channels: int = 80) -> "NoiseTape":
        """The columns of ``flow_noise(seed, ...)``."""
        return cls(seed, _FLOW_STREAM, channels)

    @classmethod
    def source(cls, seed: int, harmonics: int = 9) -> "NoiseTape":
        """The columns of ``source_noise(seed, ...)``."""
        return cls(seed, _SOURCE_STREAM, harmonics)

    def read(self, start: int, stop: int) -> np.ndarray:
        """(channels, stop − start) float32; equals ``flow_noise`` / ``source_noise`` columns [start, stop)."""
        if start < self._start or stop < start:
            raise ValueError(f"noise tape reads forward only: [{start}, {stop}) after column {self._start}")
        end = self._start + self._held.shape[0]
        if stop > end:
            drawn = self._rng.standard_normal((stop - end, self._channels), np.float32)
            self._held = np.concatenate([self._held[max(0, start - self._start) :], drawn])
            self._start = min(start, end)
        # Drop what lies before this read's start: later reads start at or after it.
        cut = start - self._start
        self._held, self._start = self._held[cut:], start
        return np.ascontiguousarray(self._held[: stop - start].T)


@dataclass(frozen=True)
class DecoderNoise:
    flow: np.ndarray  # (80, prompt frames + target frames)
    source_phase: np.ndarray  # (9,) radians
    source_noise: np.ndarray  # (9, 256 · target frames)

    @classmethod
    def from_seed(
        cls, seed: int, n_prompt_frames: int, n_tokens: int, config: DecoderConfig | None = None
    ) -> DecoderNoise:
        config = config or DecoderConfig()
        channels, width = flow_noise_shape(n_prompt_frames, n_tokens, config)
        harmonics, samples = source_noise_shape(mel_frames_for_tokens(n_tokens, config), config)
        return cls(
            flow_noise(seed, width, channels), source_phase(seed, harmonics), source_noise(seed, samples, harmonics)
        )

    def validate(self, n_prompt_frames: int, n_tokens: int, config: DecoderConfig) -> None:
        expected = {
            "flow": flow_noise_shape(n_prompt_frames, n_tokens, config),
            "source_phase": (config.hift.n_harmonic_channels,),
            "source_noise": source_noise_shape(mel_frames_for_tokens(n_tokens, config), config),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if tuple(np.shape(value)) != shape:
                raise ValueError(f"noise.{name} must have shape {shape}, got {tuple(np.shape(value))}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"noise.{name} contains NaN or infinity")
