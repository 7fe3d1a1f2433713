"""TTS LLM output → decoder ids (numpy only: the ``tts`` orchestration stubs use it without importing torch)."""

from __future__ import annotations

import numpy as np

from stepaudio.tokenizer.ids import AUDIO_ID_END, AUDIO_ID_OFFSET


def decoder_tokens(generated_ids) -> np.ndarray:
    """LLM output → decoder ids (0…5119). Only audio ids may reach the decoder; no audio is an error, not silence."""
    ids = np.asarray(generated_ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError("the TTS model produced no audio tokens")
    outside = ids[(ids < AUDIO_ID_OFFSET) | (ids >= AUDIO_ID_END)]
    if outside.size:
        raise ValueError(f"the TTS model produced non-audio id {int(outside[0])}; expected {AUDIO_ID_OFFSET}..{AUDIO_ID_END - 1}")
    return ids - AUDIO_ID_OFFSET
