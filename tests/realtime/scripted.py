"""Scripted sessions built from the shipped speech clips with silences between them: the turn boundaries are known
from the construction (first/last sample above a small level in each clip)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

DATA = Path(__file__).resolve().parent.parent / "data"
CLIPS = {16000: DATA / "speech_en_16k.wav", 8000: DATA / "speech_zh_8k.wav"}
SPEECH_LEVEL = 0.02  # the clips' own leading/trailing samples are quieter than this


@dataclass
class ScriptedSession:
    wave: np.ndarray  # mono float32
    rate: int
    speech: list[tuple[float, float]]  # known (start, end) seconds of each stretch of speech


def clip(rate: int) -> np.ndarray:
    wave, file_rate = sf.read(CLIPS[rate], dtype="float32")
    assert file_rate == rate
    return wave


def speech_span(wave: np.ndarray, rate: int) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(wave) > SPEECH_LEVEL)
    return loud[0] / rate, (loud[-1] + 1) / rate


def build(rate: int, pieces: list[float | str]) -> ScriptedSession:
    """``pieces``: seconds of silence (float) or ``"speech"`` (the clip) or ``"speech:<seconds>"`` (its first seconds)."""
    parts, spans, t = [], [], 0.0
    for piece in pieces:
        if isinstance(piece, str):
            wave = clip(rate)
            if ":" in piece:
                wave = wave[: int(float(piece.split(":")[1]) * rate)]
            start, end = speech_span(wave, rate)
            spans.append((t + start, t + end))
        else:
            wave = np.zeros(int(round(piece * rate)), dtype=np.float32)
        parts.append(wave)
        t += wave.shape[0] / rate
    return ScriptedSession(np.concatenate(parts), rate, spans)


def chunks(wave: np.ndarray, rate: int, seconds: float = 0.02):
    step = max(1, int(rate * seconds))
    for i in range(0, wave.shape[0], step):
        yield wave[i:i + step]
