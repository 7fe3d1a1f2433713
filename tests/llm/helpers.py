"""Test helpers: random prompts and a naive Step1 forward written from the spec (docs/checkpoints.md#step1-architecture)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, 65536, (length,), generator=generator).tolist()


def spec_slopes(num_heads: int) -> list[float]:
    n = 2 ** math.floor(math.log2(num_heads))
    first = [2 ** (-8 * k / n) for k in range(1, n + 1)]
    return first + [2 ** (-4 * k / n) for k in range(1, 2 * (num_heads - n), 2)]


def naive_logits(model, ids: list[int]) -> torch.Tensor:
    """Whole-sequence forward the way the reference fallback does it: K/V repeated per head
    (repeat_interleave), full L×L ALiBi-sqrt bias, explicit softmax. Returns [L, vocab] float64."""
    config = model.config
    heads, groups, head_dim = config.num_attention_heads, config.num_attention_groups, config.head_dim
    length = len(ids)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    distance = (i - j).double()
    bias = torch.stack(
        [torch.where(j <= i, -s * distance.clamp(min=0).sqrt(), -torch.inf) for s in spec_slopes(heads)]
    )

    def weight(module):
        return module.weight.double()

    def rms(x, norm):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * weight(norm)

    x = weight(model.model.embed_tokens)[torch.tensor(ids)]
    for layer in model.model.layers:
        attn = layer.self_attn
        h = rms(x, layer.input_layernorm)
        q = (h @ weight(attn.q_proj).T).view(length, heads, head_dim).transpose(0, 1)
        k = (h @ weight(attn.k_proj).T).view(length, groups, head_dim).transpose(0, 1)
        v = (h @ weight(attn.v_proj).T).view(length, groups, head_dim).transpose(0, 1)
        k = k.repeat_interleave(heads // groups, 0)
        v = v.repeat_interleave(heads // groups, 0)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias
        out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length, heads * head_dim)
        x = x + out @ weight(attn.o_proj).T
        h = rms(x, layer.post_attention_layernorm)
        mlp = layer.mlp
        x = x + (F.silu(h @ weight(mlp.gate_proj).T) * (h @ weight(mlp.up_proj).T)) @ weight(mlp.down_proj).T
    return rms(x, model.model.norm) @ weight(model.lm_head).T
