"""vq06: semantic codes at 25 Hz from CosyVoice's ``speech_tokenizer_v1.onnx``.

The reference cuts 16 kHz audio into independent 30 s segments (a trailing segment under 480 samples is dropped),
computes Whisper's 128-bin log-mel of each and runs the ONNX model (inputs: features (1, 128, T) float32 and their
length (1,) int32, looked up by position as the reference does; output: integer ids, flattened).

Because the log-mel is normalised by the segment's maximum and the model attends over the whole segment, a segment's
codes are final only when the segment is complete: in a stream, vq06 codes arrive at segment boundaries and at the
end. ``segment_seconds`` shortens segments for lower latency; codes then differ from the reference's 30 s ones but a
stream still equals a one-shot call made with the same setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stepaudio.audio.whisper_mel import log_mel_spectrogram
from stepaudio.tokenizer.ort_session import create_session

SAMPLE_RATE = 16000
SEGMENT_SECONDS = 30.0
MIN_SEGMENT_SAMPLES = 480


class SemanticTokenizer:
    def __init__(self, onnx_path: Path, segment_seconds: float = SEGMENT_SECONDS, threads: int | None = None):
        import onnxruntime as ort

        if not 0.1 <= segment_seconds <= SEGMENT_SECONDS:
            raise ValueError(f"vq06 segments must be 0.1..{SEGMENT_SECONDS:g} s long; got {segment_seconds}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = create_session(onnx_path, options)
        inputs = self.session.get_inputs()
        if len(inputs) != 2:
            raise ValueError(f"{onnx_path}: expected 2 inputs (features, length); got {[i.name for i in inputs]}")
        self._feats_name, self._length_name = inputs[0].name, inputs[1].name
        self.segment_samples = int(round(segment_seconds * SAMPLE_RATE))

    def segment_codes(self, segment: np.ndarray) -> list[int]:
        """Codes of one segment (an empty list for segments too short to tokenize)."""
        if segment.shape[0] < MIN_SEGMENT_SAMPLES:
            return []
        feats = log_mel_spectrogram(segment)[None]
        length = np.array([feats.shape[2]], dtype=np.int32)
        ids = self.session.run(None, {self._feats_name: feats, self._length_name: length})[0]
        return np.asarray(ids).reshape(-1).astype(np.int64).tolist()

    def stream(self) -> "SemanticStream":
        return SemanticStream(self)


class SemanticStream:
    def __init__(self, tokenizer: SemanticTokenizer):
        self._tokenizer = tokenizer
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, wave16k: np.ndarray) -> list[int]:
        self._pending = np.concatenate([self._pending, wave16k.astype(np.float32)])
        size = self._tokenizer.segment_samples
        codes: list[int] = []
        while self._pending.shape[0] >= size:
            codes += self._tokenizer.segment_codes(self._pending[:size])
            self._pending = self._pending[size:]
        return codes

    def finish(self) -> list[int]:
        tail, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        return self._tokenizer.segment_codes(tail)
