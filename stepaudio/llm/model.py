"""Step1 decoder (Step-Audio-TTS-3B and Step-Audio-Chat), the same math and state-dict names as the reference
``modeling_step1.py`` (docs/checkpoints.md#step1-architecture).

- pre-norm RMSNorm (variance in fp32, result cast back before the weight multiply, as the reference does);
- grouped-query attention without biases and **without RoPE**: position enters only through the ALiBi-sqrt bias
  ``-slope_h * sqrt(i - j)`` for ``j <= i`` (``-inf`` above the diagonal); query head ``h`` reads KV group
  ``h // (heads / groups)`` (the reference's ``repeat_interleave``);
- SiLU-gated MLP, untied ``lm_head``.

Positions are absolute per sequence (0 = first prompt token). The bias is computed once per forward for just the
query rows being run — a decode step builds one row per sequence, where the reference rebuilds an L×L matrix in
every layer. It is computed in fp32 and cast to the model dtype, like the reference's SDPA fallback.

KV cache: ``KVCache`` holds one ``[slots, capacity, groups, head_dim]`` tensor pair per layer. A forward with a
cache writes the new keys/values of row ``b`` at ``positions[b]`` of slot ``slots[b]`` and attends to that slot's
positions ``0 .. positions[b, i]``, so sequences of different lengths share one forward (each slot is right-padded;
what lies beyond a sequence's own position is masked).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.llm.config import Step1Config


def alibi_slopes(num_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-head slopes: with n = 2**floor(log2(heads)), (2^(-8/n))^k for k = 1..n, then (2^(-4/n))^k for odd k
    while heads remain. Powers are taken in fp32 exactly as the reference does."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    n = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2.0 ** (-8.0 / n), dtype=torch.float32, device=device)
    slopes = torch.pow(base, torch.arange(1, n + 1, dtype=torch.int32, device=device))
    if n < num_heads:
        extra_base = torch.tensor(2.0 ** (-4.0 / n), dtype=torch.float32, device=device)
        odd = torch.arange(1, 2 * (num_heads - n), 2, dtype=torch.int32, device=device)
        slopes = torch.cat([slopes, torch.pow(extra_base, odd)])
    return slopes


def alibi_sqrt_bias(
    slopes: torch.Tensor, query_positions: torch.Tensor, key_length: int, dtype: torch.dtype
) -> torch.Tensor:
    """``[B, heads, L, key_length]`` bias for queries at ``query_positions`` ``[B, L]`` over keys ``0..key_length-1``."""
    keys = torch.arange(key_length, device=query_positions.device)
    distance = query_positions[:, None, :, None] - keys  # [B, 1, L, T]
    bias = -torch.sqrt(distance.clamp_min(0).float()) * slopes[None, :, None, None]
    return bias.masked_fill(distance < 0, float("-inf")).to(dtype)


class KVCache:
    """Keys/values for ``num_slots`` sequences; grows (to at most ``max_len`` positions) when a forward needs it."""

    GROWTH = 256

    def __init__(self, config: Step1Config, num_slots: int, max_len: int, dtype: torch.dtype, device: torch.device):
        self.num_slots = num_slots
        self.max_len = max_len
        self._shape = (config.num_attention_groups, config.head_dim)
        self._dtype, self._device = dtype, device
        self.keys = [self._empty(0) for _ in range(config.num_hidden_layers)]
        self.values = [self._empty(0) for _ in range(config.num_hidden_layers)]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def _empty(self, capacity: int) -> torch.Tensor:
        return torch.zeros(self.num_slots, capacity, *self._shape, dtype=self._dtype, device=self._device)

    def ensure_capacity(self, length: int) -> None:
        if length > self.max_len:
            raise ValueError(f"KV cache needs {length} positions, more than max_len {self.max_len}")
        if length <= self.capacity:
            return
        # Doubling keeps the number of reallocations logarithmic in the sequence length.
        capacity = max(length, 2 * self.capacity)
        capacity = min(self.max_len, -(-capacity // self.GROWTH) * self.GROWTH)
        for cache in (self.keys, self.values):
            for layer, old in enumerate(cache):
                new = self._empty(capacity)
                new[:, : old.shape[1]] = old
                cache[layer] = new


class Step1RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.eps).to(x.dtype) * self.weight


class Step1Attention(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_groups = config.num_attention_groups
        self.head_dim = config.head_dim
        kv_size = self.num_groups * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        slots: _Slots | None,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        groups, per_group, head_dim = self.num_groups, self.num_heads // self.num_groups, self.head_dim
        q = self.q_proj(x).view(batch, length, groups, per_group, head_dim)
        k = self.k_proj(x).view(batch, length, groups, head_dim)
        v = self.v_proj(x).view(batch, length, groups, head_dim)
        if cache is None:
            keys, values = k, v
        else:
            key_cache, value_cache = cache
            key_cache[slots.rows[:, None], positions] = k
            value_cache[slots.rows[:, None], positions] = v
            keys, values = slots.read(key_cache, bias.shape[-1]), slots.read(value_cache, bias.shape[-1])
        # Query heads of one KV group become extra query rows of that group: no K/V copies per head.
        q = q.permute(0, 2, 3, 1, 4).reshape(batch, groups, per_group * length, head_dim)
        out = F.scaled_dot_product_attention(q, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=bias)
        out = out.view(batch, groups, per_group, length, head_dim).permute(0, 3, 1, 2, 4)
        return self.o_proj(out.reshape(batch, length, self.num_heads * head_dim))


class _Slots:
    """Cache slots of the batch rows: ``rows`` indexes the writes; reads of a contiguous run of slots are views,
    scattered slots are gathered (only the first ``key_length`` positions)."""

    def __init__(self, slots: Sequence[int], device: torch.device):
        self.rows = torch.tensor(list(slots), dtype=torch.long, device=device)
        first = slots[0]
        contiguous = list(slots) == list(range(first, first + len(slots)))
        self._run = slice(first, first + len(slots)) if contiguous else None

    def read(self, cache: torch.Tensor, key_length: int) -> torch.Tensor:
        if self._run is not None:
            return cache[self._run, :key_length]
        return cache[:, :key_length].index_select(0, self.rows)


class Step1MLP(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Step1DecoderLayer(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.input_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Step1Attention(config)
        self.post_attention_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Step1MLP(config)

    def forward(self, x, bias, cache, slots, positions) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), bias, cache, slots, positions)
        return x + self.mlp(self.post_attention_layernorm(x))


class Step1Model(nn.Module):
    def __init__(self, config: Step1Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Step1DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        slots: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states ``[B, L, hidden]``.

        Without a cache the rows are one whole sequence each (positions ``0..L-1``). With a cache, ``positions``
        ``[B, L]`` gives each row's absolute position and ``slots`` (length B) each row's cache slot.
        """
        batch, length = input_ids.shape
        device = input_ids.device
        if cache is None:
            if positions is not None:
                raise ValueError("positions are only meaningful with a KV cache; without one rows start at 0")
            positions = torch.arange(length, device=device).expand(batch, length)
            key_length, cache_slots = length, None
        else:
            if positions is None or slots is None or len(slots) != batch:
                raise ValueError("a forward with a KV cache needs positions [B, L] and one slot per row")
            key_length = int(positions.max()) + 1
            cache.ensure_capacity(key_length)
            cache_slots = _Slots(slots, device)
        x = self.embed_tokens(input_ids)
        slopes = alibi_slopes(self.config.num_attention_heads, device=device)
        bias = alibi_sqrt_bias(slopes, positions, key_length, x.dtype)
        groups = self.config.num_attention_groups
        bias = bias.reshape(batch, groups, -1, key_length)  # heads of one group stacked as query rows
        for index, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            x = layer(x, bias, layer_cache, cache_slots, positions)
        return self.norm(x)


class Step1ForCausalLM(nn.Module):
    """``model.*`` decoder + untied ``lm_head``; state-dict keys are those of the published safetensors."""

    def __init__(self, config: Step1Config):
        super().__init__()
        self.config = config
        self.model = Step1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        slots: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, vocab]`` in the model dtype (see ``Step1Model.forward`` for the arguments)."""
        return self.lm_head(self.model(input_ids, positions, cache, slots))

    def new_cache(self, num_slots: int, max_len: int) -> KVCache:
        weight = self.lm_head.weight
        return KVCache(self.config, num_slots, max_len, weight.dtype, weight.device)
