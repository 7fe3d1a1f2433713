"""Token2Wav on the served ``flow_decoder`` / ``vocoder`` models over BLS.

Streaming TTS runs its flow windows and vocoder calls through the same served models as ``ensemble_tts``: they share
those models' dynamic batching and ONNX Runtime / TensorRT engines, and the streaming model holds no decoder copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stepaudio.decoder.checkpoint import load_config
from stepaudio.decoder.token2wav import FLOW_OUTPUTS, VOCODER_OUTPUTS, Token2WavBase
from stepaudio_triton import bls


def _served(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # The model configs declare the (B,) length inputs as dims [1], reshaped to the graph's (B,).
    return {name: value.reshape(-1, 1) if name.endswith("_lens") else value for name, value in feeds.items()}


class ServedToken2Wav(Token2WavBase):
    def __init__(self, decoder_dir: str | Path, flow_model: str, vocoder_model: str):
        self.config = load_config(decoder_dir)  # shapes and rates only; the weights live in the served models
        self.flow_model, self.vocoder_model = flow_model, vocoder_model

    def run_flow(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = bls.call(self.flow_model, _served(feeds), list(FLOW_OUTPUTS))
        return out["mel"], out["mel_lens"].reshape(-1)

    def run_vocoder(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = bls.call(self.vocoder_model, _served(feeds), list(VOCODER_OUTPUTS))
        return out["wave"], out["wave_lens"].reshape(-1), out["f0"]
