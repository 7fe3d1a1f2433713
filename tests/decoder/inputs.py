"""Random decoder inputs for tests."""

from __future__ import annotations

import numpy as np


def make_voice(seed: int, n_prompt_tokens: int, n_prompt_frames: int):
    """Random prompt ids, prompt mel (T, 80) and speaker embedding (192,)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 5120, n_prompt_tokens),
        rng.standard_normal((n_prompt_frames, 80)).astype(np.float32) - 5.0,
        rng.standard_normal(192).astype(np.float32),
    )


def make_tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, 5120, n)
