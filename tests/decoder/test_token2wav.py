"""Token2Wav: lengths, batching, determinism, validation, the prompt mel front end and the music folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stepaudio.audio.mel import mel_filterbank
from stepaudio.decoder import (
    DecoderNoise,
    Token2Wav,
    Token2WavRequest,
    flow_noise,
    mel_frames_for_tokens,
    source_noise,
)
from tests.decoder.inputs import make_tokens, make_voice


def test_wave_has_256_samples_per_mel_frame(token2wav):
    prompt = make_voice(0, 14, 30)
    for n in (1, 40):
        wave = token2wav(make_tokens(n, n), *prompt, seed=1)
        assert wave.dtype == np.float32
        assert wave.shape == (256 * mel_frames_for_tokens(n),)
        assert np.abs(wave).max() <= 0.99 + 1e-6


def test_batched_equals_one_at_a_time(token2wav):
    requests = [
        Token2WavRequest(make_tokens(1, 45), *make_voice(1, 20, 50)),
        Token2WavRequest(make_tokens(2, 12), *make_voice(2, 6, 9)),
        Token2WavRequest(make_tokens(3, 30), *make_voice(3, 0, 0)),
    ]
    noises = [
        DecoderNoise.from_seed(10 + i, r.prompt_mel.shape[0], len(r.tokens), token2wav.config)
        for i, r in enumerate(requests)
    ]
    batched = token2wav.batch(requests, noises)
    for request, noise, wave in zip(requests, noises, batched):
        alone = token2wav(request.tokens, request.prompt_tokens, request.prompt_mel, request.speaker_embedding, noise=noise)
        assert wave.shape == alone.shape
        assert np.abs(alone).max() > 1e-3
        np.testing.assert_allclose(wave, alone, rtol=1e-4, atol=2e-5)


def test_seed_fixes_the_output_and_noise_is_the_only_randomness(token2wav):
    args = (make_tokens(4, 25), *make_voice(4, 10, 20))
    first, again, other = token2wav(*args, seed=7), token2wav(*args, seed=7), token2wav(*args, seed=8)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4
    explicit = DecoderNoise.from_seed(7, 20, 25, token2wav.config)
    np.testing.assert_array_equal(token2wav(*args, noise=explicit), first)


def test_noise_draws_are_prefix_stable():
    """The stream draws longer noise as tokens arrive; a longer draw must start with the shorter one."""
    np.testing.assert_array_equal(flow_noise(3, 500)[:, :123], flow_noise(3, 123))
    np.testing.assert_array_equal(source_noise(3, 9000)[:, :777], source_noise(3, 777))


@pytest.mark.parametrize(
    "tokens,message",
    [
        ([5120, 1], "5120"),
        ([3, -1], "-1"),
        ([], "tokens is empty"),
        ([1.5, 2.0], "integer ids"),
        ([[1, 2]], "1-D"),
    ],
)
def test_bad_tokens_are_rejected(token2wav, tokens, message):
    with pytest.raises(ValueError, match=message):
        token2wav(np.asarray(tokens), *make_voice(0, 5, 8), seed=0)


def test_bad_prompt_and_speaker_are_rejected(token2wav):
    tokens = make_tokens(0, 10)
    prompt_tokens, prompt_mel, spk = make_voice(0, 5, 8)
    with pytest.raises(ValueError, match=r"prompt_mel must have shape \(frames, 80\)"):
        token2wav(tokens, prompt_tokens, prompt_mel.T, spk, seed=0)
    with pytest.raises(ValueError, match="both empty or both non-empty"):
        token2wav(tokens, prompt_tokens, prompt_mel[:0], spk, seed=0)
    with pytest.raises(ValueError, match="finite"):
        token2wav(tokens, prompt_tokens, np.full_like(prompt_mel, np.nan), spk, seed=0)
    with pytest.raises(ValueError, match=r"speaker_embedding must have shape \(192,\)"):
        token2wav(tokens, prompt_tokens, prompt_mel, spk[:100], seed=0)
    with pytest.raises(ValueError, match="prompt_tokens contains id 6000"):
        token2wav(tokens, np.array([6000]), prompt_mel, spk, seed=0)
    wrong = DecoderNoise.from_seed(0, 8, 11, token2wav.config)  # drawn for 11 tokens, used for 10
    with pytest.raises(ValueError, match="noise.flow must have shape"):
        token2wav(tokens, prompt_tokens, prompt_mel, spk, noise=wrong)


def _numpy_prompt_mel(wave: np.ndarray) -> np.ndarray:
    """The reference front end written with numpy: reflect pad 384, periodic Hann 1024, hop 256, slaney mel, log."""
    padded = np.pad(wave.astype(np.float64), (384, 384), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    frames = np.stack([padded[i : i + 1024] for i in range(0, len(padded) - 1024 + 1, 256)])
    spectrum = np.fft.rfft(frames * window, axis=1)
    magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-9)
    mel = magnitude @ mel_filterbank(22050, 1024, 80, 0.0, 8000.0).astype(np.float64).T
    return np.log(np.maximum(mel, 1e-5))


def test_prompt_mel_front_end(token2wav):
    rng = np.random.default_rng(0)
    t = np.arange(22050) / 22050
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    mel = token2wav.prompt_mel(wave)
    assert mel.shape == (22050 // 256, 80) and mel.dtype == np.float32
    np.testing.assert_allclose(mel, _numpy_prompt_mel(wave), atol=2e-3)
    with pytest.raises(ValueError, match="1-D"):
        token2wav.prompt_mel(np.stack([wave, wave]))
    with pytest.raises(ValueError, match="too short"):
        token2wav.prompt_mel(wave[:100])


def test_music_folder_loads_with_the_same_code(music_dir, token2wav):
    music = Token2Wav.from_checkpoint(music_dir)
    args = (make_tokens(5, 20), *make_voice(5, 8, 12))
    speech_wave, music_wave = token2wav(*args, seed=2), music(*args, seed=2)
    assert speech_wave.shape == music_wave.shape
    assert np.abs(speech_wave - music_wave).max() > 1e-4  # separately trained weights


def test_float16_is_refused_on_cpu(speech_dir):
    with pytest.raises(ValueError, match="CUDA"):
        Token2Wav.from_checkpoint(speech_dir, dtype=torch.float16)


def test_bfloat16_flow_is_an_opt_in_on_cpu(speech_dir, token2wav):
    """The opt-in bf16 flow runs on CPU, keeps HiFT in float32 and stays within a few percent of the float32 wave."""
    half = Token2Wav.from_checkpoint(speech_dir, dtype=torch.bfloat16)
    assert next(half.flow.parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in half.hift.parameters()} == {torch.float32}
    args = (make_tokens(5, 30), *make_voice(5, 10, 24))
    full_wave, half_wave = token2wav(*args, seed=3), half(*args, seed=3)
    assert full_wave.dtype == half_wave.dtype == np.float32 and full_wave.shape == half_wave.shape
    assert 0 < np.linalg.norm(half_wave - full_wave) / np.linalg.norm(full_wave) < 0.1
