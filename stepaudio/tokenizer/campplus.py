"""CAM++ speaker embedding through ``campplus.onnx`` (CosyVoice ``_extract_spk_embedding``).

Front end: the untrimmed, un-normalised prompt at 16 kHz, Kaldi fbank with torchaudio's defaults (80 bins, 25/10 ms,
Povey window, pre-emphasis 0.97, DC removal, snip edges) on the float waveform in [−1, 1] (no ×32768), dither 0,
minus the per-utterance mean of each bin. ONNX: input (1, T, 80) float32 → output 192 floats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stepaudio.audio.kaldi import kaldi_fbank
from stepaudio.audio.resample import resample
from stepaudio.audio.validate import MAX_INPUT_SECONDS, validate_waveform
from stepaudio.tokenizer.ort_session import create_session

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
EMBEDDING_DIM = 192
MIN_SAMPLES = 400  # one 25 ms frame


def speaker_features(wave16k: np.ndarray) -> np.ndarray:
    """(T, 80) mean-normalised fbank of a 16 kHz mono waveform."""
    feats = kaldi_fbank(wave16k, SAMPLE_RATE, num_mel_bins=NUM_MEL_BINS, dither=0.0)
    return (feats - feats.mean(axis=0, keepdims=True)).astype(np.float32)


class SpeakerEncoder:
    def __init__(self, session):
        self.session = session
        self._input_name = session.get_inputs()[0].name

    @classmethod
    def from_onnx(cls, path: Path, threads: int | None = None) -> "SpeakerEncoder":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        return cls(create_session(path, options))

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """(192,) float32 embedding of a clip (validated, mixed to mono, resampled to 16 kHz)."""
        mono = validate_waveform(wave, sample_rate, max_seconds=MAX_INPUT_SECONDS)
        wave16k = resample(mono, sample_rate, SAMPLE_RATE)
        if wave16k.shape[0] < MIN_SAMPLES:
            raise ValueError(f"speaker prompt is too short: {wave16k.shape[0] / SAMPLE_RATE * 1000:.1f} ms (need 25 ms)")
        feats = speaker_features(wave16k)[None]
        embedding = np.asarray(self.session.run(None, {self._input_name: feats})[0], dtype=np.float32).reshape(-1)
        if embedding.shape != (EMBEDDING_DIM,):
            raise ValueError(f"campplus.onnx returned {embedding.size} values; expected {EMBEDDING_DIM}")
        return embedding
