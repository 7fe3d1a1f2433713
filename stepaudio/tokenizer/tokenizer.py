"""Audio → dual-codebook LLM ids, one-shot or streamed (reference ``StepAudioTokenizer.wav2token``).

One-shot: validate, mix to mono, resample to 16 kHz (any input rate), optionally energy-normalise (on by default, as
the reference) and trim silence (TTS prompts), then vq02 and vq06 codes and their 2:3 interleave.

Streaming: ``stream(sample_rate)`` takes audio in pieces of any size and returns LLM ids as soon as they are final:

- vq02 codes are final after each complete 240 ms chunk of 16 kHz audio (plus the resampler's ~20 ms look-ahead);
- vq06 codes are final when a whole segment (30 s by default) has arrived, or at ``finish()``;
- an id group (2 vq02 + 3 vq06, 120 ms) is emitted once both halves are final, so with 30 s segments ids come out at
  segment boundaries and at the end.

A stream does not energy-normalise: the peak of the whole utterance is unknown until it ends. Feeding pieces of a
clip gives exactly (bit for bit) the ids of ``tokenize(clip, rate, energy_norm=False)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stepaudio.audio.preprocess import energy_normalize, trim_silence
from stepaudio.audio.resample import Resampler
from stepaudio.audio.validate import MAX_INPUT_SECONDS, validate_sample_rate, validate_waveform
from stepaudio.checkpoints import layout
from stepaudio.tokenizer.ids import GROUP_VQ02, GROUP_VQ06, interleave
from stepaudio.tokenizer.vq02 import LinguisticTokenizer
from stepaudio.tokenizer.vq06 import SEGMENT_SECONDS, SemanticTokenizer

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class TokenizedAudio:
    vq02: list[int]  # linguistic codes 0…1023, 16.67 Hz
    vq06: list[int]  # semantic codes 0…4095, 25 Hz
    ids: list[int]  # interleaved LLM ids (65536 + vq02, 66560 + vq06), 41.67 Hz


class AudioTokenizer:
    def __init__(self, linguistic: LinguisticTokenizer, semantic: SemanticTokenizer):
        self.linguistic = linguistic
        self.semantic = semantic

    @classmethod
    def from_checkpoint(
        cls,
        tokenizer_dir: str | Path,
        backend: str = "onnx",
        vq02_onnx: str | Path | None = None,
        vq06_segment_seconds: float = SEGMENT_SECONDS,
        threads: int | None = None,
    ) -> "AudioTokenizer":
        """Load a ``Step-Audio-Tokenizer`` folder. ``backend`` runs the vq02 encoder in ``"onnx"`` (the exported
        chunk step, by default ``<paraformer dir>/vq02_encoder_chunk.onnx``) or ``"torch"``; vq06 is always ONNX.
        ``threads`` sets ONNX Runtime's intra-op threads (torch follows the process-wide ``torch.set_num_threads``)."""
        tokenizer_dir = Path(tokenizer_dir)
        linguistic = LinguisticTokenizer.from_dir(tokenizer_dir, backend, vq02_onnx, threads)
        semantic = SemanticTokenizer(tokenizer_dir / layout.SEMANTIC_TOKENIZER_ONNX, vq06_segment_seconds, threads)
        return cls(linguistic, semantic)

    def tokenize(self, wave: np.ndarray, sample_rate: int, trim: bool = False, energy_norm: bool = True,
                 max_seconds: float = MAX_INPUT_SECONDS) -> TokenizedAudio:
        """``trim=True`` for TTS prompt audio (reference ``wav2token``), False for chat input (reference ``__call__``)."""
        mono = validate_waveform(wave, sample_rate, max_seconds=max_seconds)
        resampler = Resampler(sample_rate, SAMPLE_RATE)
        wave16k = np.concatenate([resampler.feed(mono), resampler.finish()])
        if energy_norm:
            wave16k = energy_normalize(wave16k)
        if trim:
            wave16k = trim_silence(wave16k, SAMPLE_RATE)
        stream = self.stream(SAMPLE_RATE)
        ids = stream.feed(wave16k) + stream.finish()
        return TokenizedAudio(vq02=stream.vq02, vq06=stream.vq06, ids=ids)

    def stream(self, sample_rate: int) -> "TokenizerStream":
        return TokenizerStream(self, sample_rate)


class TokenizerStream:
    """``feed(chunk) -> new final ids``; ``finish() -> the remaining ids``. ``vq02``/``vq06`` hold the final codes."""

    def __init__(self, tokenizer: AudioTokenizer, sample_rate: int):
        self.sample_rate = validate_sample_rate(sample_rate)
        self._resampler = Resampler(self.sample_rate, SAMPLE_RATE)
        self._linguistic = tokenizer.linguistic.stream()
        self._semantic = tokenizer.semantic.stream()
        self.vq02: list[int] = []
        self.vq06: list[int] = []
        self._groups_emitted = 0
        self._finished = False

    def feed(self, chunk: np.ndarray) -> list[int]:
        if self._finished:
            raise ValueError("tokenizer stream already finished")
        if isinstance(chunk, np.ndarray) and chunk.ndim in (1, 2) and chunk.shape[-1] == 0:
            return []
        mono = validate_waveform(chunk, self.sample_rate, max_seconds=None)
        return self._advance(self._resampler.feed(mono))

    def finish(self) -> list[int]:
        if self._finished:
            raise ValueError("tokenizer stream already finished")
        self._finished = True
        ids = self._advance(self._resampler.finish())
        self.vq02 += self._linguistic.finish()
        self.vq06 += self._semantic.finish()
        return ids + self._new_ids()

    def _advance(self, wave16k: np.ndarray) -> list[int]:
        self.vq02 += self._linguistic.feed(wave16k)
        self.vq06 += self._semantic.feed(wave16k)
        return self._new_ids()

    def _new_ids(self) -> list[int]:
        groups = min(len(self.vq02) // GROUP_VQ02, len(self.vq06) // GROUP_VQ06)
        done, self._groups_emitted = self._groups_emitted, groups
        return interleave(self.vq02[done * GROUP_VQ02 : groups * GROUP_VQ02], self.vq06[done * GROUP_VQ06 : groups * GROUP_VQ06])
