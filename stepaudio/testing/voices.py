"""Writer of a preset-voices folder in the reference's ``speakers/`` layout (``speakers_info.json`` + wavs).

The reference's speakers (Tingting, TingtingRAP, Tingting哼唱) keep their published transcripts; their audio here is
synthetic: a voiced, pitch-gliding harmonic signal with syllable-like envelopes, enough for the tokenizer, the
CAM++ encoder and the mel front end to produce real features. Real deployments point ``--voices`` at the
reference repository's ``speakers/`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

from stepaudio.checkpoints import layout, register_writer
from stepaudio.tts.tags import contract_data
from stepaudio.tts.voices import SPEAKERS_INFO

SAMPLE_RATE = 22050


def synthetic_voice(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None) ** 0.5
    wave = wave * syllables + 0.01 * rng.standard_normal(t.size)
    silence = np.zeros(int(0.2 * sample_rate))
    wave = np.concatenate([silence, wave, silence])
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


@register_writer("voices")
def write_voices(root: Path, variant: str, seed: int) -> list[Path]:
    folder = Path(root) / layout.SPEAKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    transcripts = contract_data()["builtin_speaker_transcripts"]
    written = [folder / SPEAKERS_INFO]
    written[0].write_text(json.dumps(transcripts, ensure_ascii=False, indent=1), encoding="utf-8")
    for index, speaker in enumerate(sorted(transcripts)):
        path = folder / f"{speaker}_prompt.wav"
        soundfile.write(path, synthetic_voice(2.0, seed * 100 + index), SAMPLE_RATE)
        written.append(path)
    return written
