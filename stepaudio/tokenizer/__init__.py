"""Dual-codebook audio tokenizer (vq02 linguistic + vq06 semantic) and the CAM++ speaker encoder.

Public API::

    tok = AudioTokenizer.from_checkpoint("<ckpt>/Step-Audio-Tokenizer", backend="onnx" | "torch")
    tok.tokenize(wave, sample_rate, trim=False) -> TokenizedAudio(vq02, vq06, ids)
    s = tok.stream(sample_rate); s.feed(chunk) -> new final ids; s.finish() -> remaining ids
    ids_to_audio_string(ids) -> "<audio_N>…"; audio_string_to_ids(text) -> ids
    SpeakerEncoder.from_onnx(path).embed(wave, sample_rate) -> (192,) float32
"""

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

# The encoders import torch (slow to import); loaded on first use, so that code needing only the id helpers (the chat
# template in every chat orchestration stub) starts without it.
_LAZY = {
    "SpeakerEncoder": "stepaudio.tokenizer.campplus",
    "AudioTokenizer": "stepaudio.tokenizer.tokenizer",
    "TokenizedAudio": "stepaudio.tokenizer.tokenizer",
    "TokenizerStream": "stepaudio.tokenizer.tokenizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
