"""The eager no-padding fast path (stepaudio/decoder/masks.py) computes what the masked graph computes."""

from __future__ import annotations

import torch

from stepaudio.decoder import estimator
from stepaudio.decoder import hift as hift_module
from stepaudio.decoder.masks import masked, no_padding


def _always_masked(monkeypatch):
    for module in (estimator, hift_module):
        monkeypatch.setattr(module, "no_padding", lambda mask: False)


def test_no_padding_sees_padding():
    assert no_padding(torch.ones(2, 1, 9))
    mask = torch.ones(2, 1, 9)
    mask[1, 0, -1] = 0
    assert not no_padding(mask)
    x = torch.randn(2, 3, 9)
    assert masked(x, None) is x
    torch.testing.assert_close(masked(x, mask), x * mask)


def test_estimator_fast_path_equals_the_masked_graph(token2wav, monkeypatch):
    g = torch.Generator().manual_seed(5)
    length = 37
    x, mu, cond = (torch.randn(2, 80, length, generator=g) for _ in range(3))
    args = (x, torch.ones(2, 1, length), mu, torch.rand(2, generator=g), torch.randn(2, 80, generator=g), cond)
    with torch.no_grad():
        fast = token2wav.flow.decoder.estimator(*args)
        _always_masked(monkeypatch)
        full = token2wav.flow.decoder.estimator(*args)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_vocoder_fast_path_equals_the_masked_graph(token2wav, monkeypatch):
    g = torch.Generator().manual_seed(6)
    frames = 23
    mel = torch.randn(1, 80, frames, generator=g) - 5
    phase = torch.rand(1, 9, generator=g)
    noise = torch.randn(1, 9, frames * 256, generator=g)
    with torch.no_grad():
        fast = token2wav.hift(mel, torch.tensor([frames]), phase, noise)
        _always_masked(monkeypatch)
        full = token2wav.hift(mel, torch.tensor([frames]), phase, noise)
    for a, b in zip(fast, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
