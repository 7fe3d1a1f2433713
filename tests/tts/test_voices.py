"""Voice features are computed once per audio content and shared whatever the transcript says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stepaudio.tts.voices import PresetVoices, VoiceCache, VoiceFeatures


def fake_featurizer(calls):
    def featurize(wave, rate):
        calls.append(rate)
        return VoiceFeatures((65536 + int(abs(wave).sum() * 10) % 5120,), np.zeros((4, 80), np.float32), np.ones(192, np.float32))

    return featurize


def test_cache_is_keyed_by_audio_not_transcript():
    calls = []
    cache = VoiceCache(fake_featurizer(calls))
    wave = np.sin(np.arange(1600, dtype=np.float32))
    a = cache.voice(wave, 16000, "one transcript")
    b = cache.voice(wave.copy(), 16000, "another transcript")
    assert len(calls) == 1 and cache.hits == 1
    assert a.prompt_code == b.prompt_code and b.prompt_text == "another transcript"
    cache.voice(wave, 22050, "same samples, other rate")
    assert len(calls) == 2


def test_cache_evicts_least_recently_used():
    calls = []
    cache = VoiceCache(fake_featurizer(calls), max_entries=2)
    waves = [np.full(10, i, np.float32) for i in range(3)]
    for w in waves:
        cache.features(w, 16000)
    cache.features(waves[0], 16000)  # evicted → recomputed
    assert len(calls) == 4


def test_decoder_tokens_drop_the_llm_offset():
    cache = VoiceCache(lambda w, r: VoiceFeatures((65536, 66560, 70655), np.zeros((1, 80), np.float32), np.zeros(192, np.float32)))
    assert cache.voice(np.zeros(4, np.float32), 16000, "x").decoder_tokens.tolist() == [0, 1024, 5119]


def test_preset_voices_resolve_music_variants_and_reject_unknown(tmp_path):
    (tmp_path / "speakers_info.json").write_text(json.dumps({"Anna": "hello", "AnnaRAP": "yo"}))
    for name in ("Anna", "AnnaRAP"):
        (tmp_path / f"{name}_prompt.wav").write_bytes(name.encode())
    calls = []
    voices = PresetVoices(tmp_path, VoiceCache(fake_featurizer(calls)), lambda f: (np.full(8, len(f.read()), np.float32), 16000))
    assert voices.resolve("Anna", "RAP") == "AnnaRAP"
    assert voices.resolve("Anna", "哼唱") == "Anna"
    assert voices.voice("Anna", "RAP").prompt_text == "yo"
    with pytest.raises(ValueError, match="unknown speaker 'Bob'"):
        voices.voice("Bob")


def test_preset_folder_must_be_complete(tmp_path):
    (tmp_path / "speakers_info.json").write_text(json.dumps({"Anna": "hello"}))
    with pytest.raises(ValueError, match="no Anna_prompt.wav"):
        PresetVoices(tmp_path, VoiceCache(fake_featurizer([])), lambda p: (np.zeros(1, np.float32), 16000))
