"""Reading audio files (wav, flac, ogg: whatever libsndfile decodes) for CLI and notebook use.

Served models never take a path from a request: adapters pass arrays and rates straight to the library.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
import soundfile as sf


def load_audio(path_or_file: str | BinaryIO) -> tuple[np.ndarray, int]:
    """Decode a file into float32 samples in [-1, 1]: ``(samples,)`` when mono, else ``(channels, samples)``."""
    try:
        data, sample_rate = sf.read(path_or_file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"cannot decode audio: {exc}") from exc
    wave = np.ascontiguousarray(data.T)
    return (wave[0] if wave.shape[0] == 1 else wave), int(sample_rate)
