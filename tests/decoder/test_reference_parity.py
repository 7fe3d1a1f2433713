"""Batch-1 outputs equal the reference's inference math (written the CosyVoice way in ``reference_math``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stepaudio.decoder.checkpoint import load_flow, load_hift
from tests.decoder import reference_math
from tests.decoder.inputs import make_tokens, make_voice


@pytest.fixture(scope="module")
def flow(speech_dir):
    return load_flow(speech_dir)


@pytest.fixture(scope="module")
def hift(speech_dir):
    return load_hift(speech_dir)


@pytest.mark.parametrize("n_tokens,n_prompt,n_prompt_frames", [(37, 12, 29), (20, 0, 0), (9, 5, 3)])
def test_flow_equals_reference_inference(flow, n_tokens, n_prompt, n_prompt_frames):
    prompt, prompt_mel, spk = (torch.from_numpy(np.asarray(a)) for a in make_voice(1, n_prompt, n_prompt_frames))
    tokens = torch.from_numpy(make_tokens(2, n_tokens))
    n_target = flow.config.mel_frames_for_tokens(n_tokens)
    noise = torch.randn(1, 80, n_prompt_frames + n_target, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference_math.flow_inference(flow, tokens[None], prompt[None], prompt_mel[None], spk[None], noise)
        mel, lens = flow(
            tokens[None],
            torch.tensor([n_tokens]),
            prompt[None],
            torch.tensor([n_prompt]),
            prompt_mel[None],
            torch.tensor([n_prompt_frames]),
            spk[None],
            noise,
        )
    assert lens.tolist() == [n_target] and mel.shape == expected.shape == (1, 80, n_target)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(mel, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_frames", [1, 23])
def test_hift_equals_reference_inference(hift, n_frames):
    g = torch.Generator().manual_seed(n_frames)
    mel = torch.randn(1, 80, n_frames, generator=g) - 4
    phase = (torch.rand(1, 9, generator=g) * 2 - 1) * np.pi
    phase[:, 0] = 0  # the reference zeroes the fundamental's random phase
    noise = torch.randn(1, 9, 256 * n_frames, generator=g)
    with torch.no_grad():
        expected = reference_math.hift_inference(hift, mel, phase[..., None], noise)
        wave, lens, _ = hift(mel, torch.tensor([n_frames]), phase, noise)
    assert lens.tolist() == [256 * n_frames] and wave.shape == expected.shape
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(wave, expected, rtol=1e-4, atol=2e-5)


def test_the_fundamental_phase_input_is_ignored(hift):
    """SineGen forces the first harmonic's random phase to 0; a caller's value there must not matter."""
    g = torch.Generator().manual_seed(0)
    mel, noise = torch.randn(1, 80, 6, generator=g) - 4, torch.randn(1, 9, 256 * 6, generator=g)
    phase = torch.rand(1, 9, generator=g)
    shifted = phase.clone()
    shifted[:, 0] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(hift(mel, torch.tensor([6]), phase, noise)[0], hift(mel, torch.tensor([6]), shifted, noise)[0])


def test_flow_runs_in_bfloat16_like_the_reference_on_gpu(speech_dir, flow):
    """The reference casts the flow to bf16; the same module in bf16 stays within a few percent of float32."""
    g = torch.Generator().manual_seed(4)
    n_tokens, n_prompt, n_frames = 30, 10, 24
    width = n_frames + flow.config.mel_frames_for_tokens(n_tokens)
    inputs = (
        torch.randint(0, 5120, (1, n_tokens), generator=g),
        torch.tensor([n_tokens]),
        torch.randint(0, 5120, (1, n_prompt), generator=g),
        torch.tensor([n_prompt]),
        torch.randn(1, n_frames, 80, generator=g),
        torch.tensor([n_frames]),
        torch.randn(1, 192, generator=g),
        torch.randn(1, 80, width, generator=g),
    )
    half = load_flow(speech_dir, dtype=torch.bfloat16)
    with torch.no_grad():
        full_mel, _ = flow(*inputs)
        half_mel, _ = half(*inputs)
    assert half_mel.dtype == torch.float32
    assert (half_mel - full_mel).norm() / full_mel.norm() < 0.03
