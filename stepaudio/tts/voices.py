"""Voices: what the TTS LLM and the decoder need from a speaker's prompt audio, computed once and cached.

A voice prompt (reference ``preprocess_prompt_wav``) is
- ``prompt_code``: interleaved dual-codebook LLM ids of the *trimmed, energy-normalised* 16 kHz prompt (in-context cloning),
- ``prompt_mel``: 80-bin log-mel of the *untrimmed* prompt at 22.05 kHz (flow conditioning, T×80),
- ``speaker_embedding``: CAM++ 192-d vector of the *untrimmed* 16 kHz prompt,
plus the prompt transcript. Features are cached by a hash of the audio content (samples and rate), never by the
transcript, so two requests cloning the same recording share one entry whatever they call it.

Preset voices come from a folder laid out like the reference's ``speakers/``: ``speakers_info.json`` (id → transcript)
and ``{id}_prompt.wav``. RAP/humming requests use ``{id}RAP`` / ``{id}哼唱`` when the folder has them (as the
reference does) and fall back to ``{id}`` otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stepaudio.tokenizer.ids import AUDIO_ID_OFFSET

SPEAKERS_INFO = "speakers_info.json"


@dataclass(frozen=True)
class VoicePrompt:
    prompt_text: str
    prompt_code: tuple[int, ...]  # LLM ids 65536…70655
    prompt_mel: np.ndarray  # (T, 80) float32
    speaker_embedding: np.ndarray  # (192,) float32

    @property
    def decoder_tokens(self) -> np.ndarray:
        return np.asarray(self.prompt_code, dtype=np.int64) - AUDIO_ID_OFFSET


@dataclass(frozen=True)
class VoiceFeatures:
    prompt_code: tuple[int, ...]
    prompt_mel: np.ndarray
    speaker_embedding: np.ndarray


# wave (mono float32), sample rate → features. The TTS pipeline builds it from the tokenizer, CAM++ and mel front end.
Featurizer = Callable[[np.ndarray, int], VoiceFeatures]


def audio_key(wave: np.ndarray, sample_rate: int) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes())
    digest.update(str(int(sample_rate)).encode())
    return digest.hexdigest()


class VoiceCache:
    """Thread-safe LRU of voice features keyed by audio content."""

    def __init__(self, featurize: Featurizer, max_entries: int = 256):
        if max_entries < 1:
            raise ValueError("voice cache needs room for at least one entry")
        self._featurize = featurize
        self._entries: OrderedDict[str, VoiceFeatures] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def features(self, wave: np.ndarray, sample_rate: int) -> VoiceFeatures:
        key = audio_key(wave, sample_rate)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        features = self._featurize(wave, sample_rate)  # outside the lock: featurising takes a while
        with self._lock:
            self.misses += 1
            self._entries[key] = features
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return features

    def voice(self, wave: np.ndarray, sample_rate: int, prompt_text: str) -> VoicePrompt:
        f = self.features(wave, sample_rate)
        return VoicePrompt(prompt_text, f.prompt_code, f.prompt_mel, f.speaker_embedding)


class PresetVoices:
    """The preset speakers of a voices folder; their audio is read once at start-up."""

    def __init__(self, folder: Path, cache: VoiceCache, read_audio: Callable[[object], tuple[np.ndarray, int]]):
        folder = Path(folder)
        info_path = folder / SPEAKERS_INFO
        if not info_path.is_file():
            raise ValueError(f"voices folder {folder} has no {SPEAKERS_INFO}")
        self.transcripts: dict[str, str] = json.loads(info_path.read_text(encoding="utf-8"))
        self._audio: dict[str, tuple[np.ndarray, int]] = {}
        for speaker in self.transcripts:
            # Speaker ids are not ASCII (Tingting哼唱): build the path as UTF-8 bytes, so it opens whatever the
            # filesystem encoding of the process (Triton's python stub may run with an ASCII one).
            wav = os.path.join(os.fsencode(folder), f"{speaker}_prompt.wav".encode("utf-8"))
            if not os.path.isfile(wav):
                raise ValueError(f"voices folder {folder} lists {speaker!r} but has no {speaker}_prompt.wav")
            with open(wav, "rb") as file:
                self._audio[speaker] = read_audio(file)
        self._cache = cache

    @property
    def names(self) -> list[str]:
        return sorted(self.transcripts)

    def resolve(self, speaker: str, music: str | None = None) -> str:
        if speaker not in self.transcripts:
            raise ValueError(f"unknown speaker {speaker!r}; known speakers: {', '.join(self.names)}")
        variant = f"{speaker}{music}" if music else speaker
        return variant if variant in self.transcripts else speaker

    def voice(self, speaker: str, music: str | None = None) -> VoicePrompt:
        name = self.resolve(speaker, music)
        wave, rate = self._audio[name]
        return self._cache.voice(wave, rate, self.transcripts[name])

    def warm(self) -> None:
        for name in self.names:
            self.voice(name)
