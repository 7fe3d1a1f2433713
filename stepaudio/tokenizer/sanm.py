"""The Paraformer-streaming encoder (FunASR ``SANMEncoderChunkOpt``) as one pure chunk step.

Parameter names equal the ``encoder.*`` keys of the published ``model.pt`` (minus the prefix), so the real weights
load strictly. ``forward`` is FunASR's ``forward_chunk`` for ``chunk_size=[0, 4, 5]``, ``encoder_chunk_look_back=4``
with all state passed in and returned, which is what the ONNX export needs:

- the new LFR frames are scaled by √d and get a sinusoidal position code that continues across chunks
  (positions 1, 2, … counted over the stream: ``offset``);
- they are appended to the last 5 (``chunk_size[0] + chunk_size[2]``) frames of the previous window (``overlap``;
  zeros before the first chunk), giving a window of ``5 + T`` frames;
- every SAN-M layer attends from the window over [its key/value cache, the window] without a mask, adds the FSMN
  memory (depthwise conv over the window's values, zero-padded at the window edges), and then caches the keys/values of
  all window frames but the last 5, keeping the newest 16 (look-back 4 × 4 frames);
- only the last ``T`` outputs (after ``after_norm``) are new.

The caches are fixed-size (``CACHE_FRAMES`` slots per layer, newest last) with ``cache_valid`` counting the filled
slots; empty slots are masked out of the softmax, which is the same as FunASR's growing cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stepaudio.tokenizer.funasr_files import EncoderConfig

CHUNK_SIZE = (0, 4, 5)  # FunASR [left pad, chunk frames, right context] as the reference tokenizer sets it
ENCODER_LOOK_BACK = 4  # chunks of key/value history per layer
OVERLAP_FRAMES = CHUNK_SIZE[0] + CHUNK_SIZE[2]
CACHE_FRAMES = ENCODER_LOOK_BACK * CHUNK_SIZE[1]
CHUNK_SAMPLES = CHUNK_SIZE[1] * 960  # 240 ms of 16 kHz audio per encoder step (FunASR chunk_stride_samples)
LAYER_NORM_EPS = 1e-12


class SanmAttention(nn.Module):
    def __init__(self, in_size: int, size: int, heads: int, kernel_size: int, sanm_shift: int):
        super().__init__()
        self.heads = heads
        self.head_dim = size // heads
        self.linear_q_k_v = nn.Linear(in_size, 3 * size)
        self.linear_out = nn.Linear(size, size)
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        left = (kernel_size - 1) // 2 + sanm_shift
        self.fsmn_padding = (left, kernel_size - 1 - left)

    def forward(self, x: torch.Tensor, cache: torch.Tensor, cache_mask: torch.Tensor):
        """x (1, W, in); cache (2, H, C, d) keys/values; cache_mask (C,) True where empty → out, new cache."""
        window = x.shape[1]
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)

        def heads(t):
            return t.reshape(1, window, self.heads, self.head_dim).transpose(1, 2)

        q_h, k_h, v_h = heads(q), heads(k), heads(v)
        keys = torch.cat([cache[0:1], k_h], dim=2)
        values = torch.cat([cache[1:2], v_h], dim=2)
        stride = window - OVERLAP_FRAMES
        new_cache = torch.cat([cache, torch.cat([k_h, v_h])[:, :, :stride]], dim=2)[:, :, stride:]

        memory = nn.functional.pad(v.transpose(1, 2), self.fsmn_padding)
        memory = self.fsmn_block(memory).transpose(1, 2) + v
        scores = torch.matmul(q_h * self.head_dim**-0.5, keys.transpose(-2, -1))
        mask = torch.cat([cache_mask, torch.zeros(window, dtype=torch.bool)])
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        context = torch.matmul(torch.softmax(scores, dim=-1), values)
        context = context.transpose(1, 2).reshape(1, window, self.heads * self.head_dim)
        return self.linear_out(context) + memory, new_cache


class FeedForward(nn.Module):
    def __init__(self, size: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)

    def forward(self, x):
        return self.w_2(torch.relu(self.w_1(x)))


class SanmLayer(nn.Module):
    def __init__(self, in_size: int, cfg: EncoderConfig):
        super().__init__()
        size = cfg.output_size
        self.self_attn = SanmAttention(in_size, size, cfg.attention_heads, cfg.kernel_size, cfg.sanm_shift)
        self.feed_forward = FeedForward(size, cfg.linear_units)
        self.norm1 = nn.LayerNorm(in_size, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(size, eps=LAYER_NORM_EPS)
        self.residual_attention = in_size == size  # the first layer (560 → 512) has no attention residual

    def forward(self, x, cache, cache_mask):
        attended, new_cache = self.self_attn(self.norm1(x), cache, cache_mask)
        x = x + attended if self.residual_attention else attended
        return x + self.feed_forward(self.norm2(x)), new_cache


class SanmEncoder(nn.Module):
    """``SANMEncoderChunkOpt`` chunk step; ``load_state_dict`` takes the ``encoder.*`` keys without the prefix."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders0 = nn.ModuleList([SanmLayer(cfg.input_size, cfg)])
        self.encoders = nn.ModuleList([SanmLayer(cfg.output_size, cfg) for _ in range(cfg.num_blocks - 1)])
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=LAYER_NORM_EPS)
        half = cfg.input_size // 2
        # FunASR builds the timescales in float32: exp(-i · ln(10000) / (half − 1))
        increment = torch.log(torch.tensor([10000.0])) / (half - 1)
        self.register_buffer("inv_timescales", torch.exp(torch.arange(half, dtype=torch.float32) * -increment))

    def initial_state(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        return {
            "offset": torch.zeros(1, dtype=torch.int64),
            "overlap": torch.zeros(1, OVERLAP_FRAMES, cfg.input_size),
            "kv_cache": torch.zeros(cfg.num_blocks, 2, cfg.attention_heads, CACHE_FRAMES, cfg.head_dim),
            "cache_valid": torch.zeros(1, dtype=torch.int64),
        }

    def forward(self, feats, offset, overlap, kv_cache, cache_valid):
        """feats (1, T, 560) → encoder_out (1, T, 512) and the next offset, overlap, kv_cache, cache_valid."""
        frames = feats.shape[1]
        x = feats * math.sqrt(self.cfg.output_size)
        positions = (offset + torch.arange(1, frames + 1)).to(torch.float32)
        angles = positions[:, None] * self.inv_timescales[None, :]
        x = x + torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)[None]
        x = torch.cat([overlap, x], dim=1)
        next_overlap = x[:, -OVERLAP_FRAMES:]
        cache_mask = torch.arange(CACHE_FRAMES) < CACHE_FRAMES - cache_valid
        new_caches = []
        for index, layer in enumerate([*self.encoders0, *self.encoders]):
            x, layer_cache = layer(x, kv_cache[index], cache_mask)
            new_caches.append(layer_cache)
        out = self.after_norm(x)[:, -frames:]
        next_valid = torch.clamp(cache_valid + frames, max=CACHE_FRAMES)
        return out, offset + frames, next_overlap, torch.stack(new_caches), next_valid
