"""bench/flops.py counts the attention our custom op computes (PyTorch's counter alone would skip it)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import flops  # noqa: F401 - registers the formula
from stepaudio.decoder.estimator import attention, key_masked_attention

BATCH, LENGTH, HEADS, DIM = 2, 7, 4, 16
EXPECTED = 4 * BATCH * LENGTH * LENGTH * HEADS * DIM  # q·kᵀ and the weighted sum of v: 2·B·T·T·(heads·d) each


@pytest.mark.parametrize("path", ["custom op, padded keys", "eager, no padding"])
def test_attention_is_counted_on_both_paths(path):
    q, k, v = (torch.randn(BATCH, LENGTH, HEADS * DIM) for _ in range(3))
    key_valid = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    key_valid[1, -2:] = False
    with FlopCounterMode(display=False) as counter:
        if path.startswith("custom"):
            key_masked_attention(q, k, v, key_valid, HEADS)
        else:
            attention(q, k, v, None, HEADS)
    assert counter.get_total_flops() == EXPECTED
