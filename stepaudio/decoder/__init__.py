"""Hybrid speech decoder: flow matching (tokens → mel) + HiFT vocoder (mel → 22.05 kHz wave).

Loads the published ``CosyVoice-300M-25Hz`` / ``CosyVoice-300M-25Hz-Music`` folders (``cosyvoice.yaml``, ``flow.pt``,
``hift.pt``) strictly; see ``token2wav`` for the offline, batched and streaming entry points.
"""

from stepaudio.decoder.config import DecoderConfig
from stepaudio.decoder.noise import (
    DecoderNoise,
    flow_noise,
    flow_noise_shape,
    mel_frames_for_tokens,
    source_noise,
    source_noise_shape,
    source_phase,
)

# The runners import torch (slow to import); loaded on first use, so that orchestration stubs that only read a config or
# draw noise (tts, tts_music) start without it.
_TOKEN2WAV = ("OnnxToken2Wav", "Token2Wav", "Token2WavBase", "Token2WavRequest", "Token2WavStream")


def __getattr__(name: str):
    if name in _TOKEN2WAV:
        from stepaudio.decoder import token2wav

        return getattr(token2wav, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DecoderConfig",
    "DecoderNoise",
    "OnnxToken2Wav",
    "Token2Wav",
    "Token2WavBase",
    "Token2WavRequest",
    "Token2WavStream",
    "flow_noise",
    "flow_noise_shape",
    "mel_frames_for_tokens",
    "source_noise",
    "source_noise_shape",
    "source_phase",
]
