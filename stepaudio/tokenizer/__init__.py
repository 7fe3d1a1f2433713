"""Dual-codebook audio tokenizer (vq02 linguistic + vq06 semantic) and the CAM++ speaker encoder.

Public API::

    tok = AudioTokenizer.from_checkpoint("<ckpt>/Step-Audio-Tokenizer", backend="onnx" | "torch")
    tok.tokenize(wave, sample_rate, trim=False) -> TokenizedAudio(vq02, vq06, ids)
    s = tok.stream(sample_rate); s.feed(chunk) -> new final ids; s.finish() -> remaining ids
    ids_to_audio_string(ids) -> "<audio_N>…"; audio_string_to_ids(text) -> ids
    SpeakerEncoder.from_onnx(path).embed(wave, sample_rate) -> (192,) float32
"""

from stepaudio.tokenizer.campplus import SpeakerEncoder
from stepaudio.tokenizer.ids import (
    AUDIO_ID_END,
    AUDIO_ID_OFFSET,
    VQ02_CODES,
    VQ06_CODES,
    VQ06_ID_OFFSET,
    audio_string_to_ids,
    ids_to_audio_string,
    interleave,
)
from stepaudio.tokenizer.tokenizer import AudioTokenizer, TokenizedAudio, TokenizerStream

__all__ = [
    "AUDIO_ID_END",
    "AUDIO_ID_OFFSET",
    "VQ02_CODES",
    "VQ06_CODES",
    "VQ06_ID_OFFSET",
    "AudioTokenizer",
    "SpeakerEncoder",
    "TokenizedAudio",
    "TokenizerStream",
    "audio_string_to_ids",
    "ids_to_audio_string",
    "interleave",
]
