"""bench/flops.py counts the attention our custom op computes (PyTorch's counter alone would skip it)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import flops  # noqa: F401 - registers the formula
from stepaudio.decoder.estimator import key_masked_attention


def test_key_masked_attention_is_counted():
    batch, length, heads, dim = 2, 7, 4, 16
    q, k, v = (torch.randn(batch, length, heads * dim) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        key_masked_attention(q, k, v, torch.ones(batch, length, dtype=torch.bool), heads)
    # q·kᵀ and the weighted sum of v: 2·B·T·T·(heads·d) each
    assert counter.get_total_flops() == 4 * batch * length * length * heads * dim
