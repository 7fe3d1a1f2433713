"""Hybrid speech decoder: flow matching (tokens → mel) + HiFT vocoder (mel → 22.05 kHz wave).

Loads the published ``CosyVoice-300M-25Hz`` / ``CosyVoice-300M-25Hz-Music`` folders (``cosyvoice.yaml``, ``flow.pt``,
``hift.pt``) strictly; see ``token2wav`` for the offline, batched and streaming entry points.
"""

from stepaudio.decoder.config import DecoderConfig
from stepaudio.decoder.token2wav import (
    DecoderNoise,
    OnnxToken2Wav,
    Token2Wav,
    Token2WavBase,
    Token2WavRequest,
    Token2WavStream,
    flow_noise,
    flow_noise_shape,
    mel_frames_for_tokens,
    source_noise,
    source_noise_shape,
    source_phase,
)

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
