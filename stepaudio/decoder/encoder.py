"""Token encoder of the flow: espnet relative-position Conformer without macaron FFN or conv module.

Module and parameter names follow CosyVoice's ``ConformerEncoder`` so ``flow.pt`` loads strictly:
``embed.out.{0,1}`` (Linear + LayerNorm), ``encoders.{i}.{norm_mha, self_attn.*, norm_ff, feed_forward.w_{1,2}}``,
``after_norm``. Padding is handled with a key mask, so a padded batch gives each row what it gets alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.decoder.config import EncoderConfig


def relative_position_encoding(length: int | torch.SymInt, d_model: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 2·length−1, d_model) sinusoids of relative positions length−1 … −(length−1) (espnet "new" rel-pos).

    Computed on the fly from the same float32 formula as the reference's precomputed table, so any length works.
    """
    positions = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / d_model)
    )
    angles = positions * div_term
    table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(1, -1, d_model)
    return table.to(dtype)


def key_padding_bias(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, T_key) additive attention bias: 0 for real keys, the dtype's lowest value for padded ones.

    Adding 0 leaves real scores bit-exact; an additive bias (instead of masking the B×h×T×T scores) is also what
    keeps exported attention to one Add before the Softmax.
    """
    return (~key_mask).to(dtype)[:, None, None, :] * torch.finfo(dtype).min


class RelPositionMultiHeadedAttention(nn.Module):
    def __init__(self, n_head: int, n_feat: int, key_bias: bool = True):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.linear_q(x).view(batch, length, self.h, self.d_k)
        k = self.linear_k(x).view(batch, length, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(batch, length, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)  # (1, h, 2T-1, d_k)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # (B, h, T, 2T-1)
        # Relative shift: score(i, j) uses the encoding of distance i − j, stored at column (T − 1) − i + j.
        steps = torch.arange(length, device=x.device)
        shift = (length - 1) - steps.unsqueeze(1) + steps.unsqueeze(0)
        position = torch.gather(position, -1, shift.expand(batch, self.h, length, length))
        attn = torch.softmax((content + position) / math.sqrt(self.d_k) + key_bias, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(batch, length, self.h * self.d_k)
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerEncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        size = config.output_size
        self.self_attn = RelPositionMultiHeadedAttention(config.attention_heads, size, config.key_bias)
        self.feed_forward = PositionwiseFeedForward(size, config.linear_units)
        self.norm_ff = nn.LayerNorm(size, eps=1e-5)
        self.norm_mha = nn.LayerNorm(size, eps=1e-5)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_emb, key_bias)
        return x + self.feed_forward(self.norm_ff(x))


class LinearEmbed(nn.Module):
    """``LinearNoSubsampling`` + espnet rel-pos scaling: Linear → LayerNorm → ×√d."""

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.xscale


class ConformerEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embed = LinearEmbed(config.input_size, config.output_size)
        self.encoders = nn.ModuleList(ConformerEncoderLayer(config) for _ in range(config.num_blocks))
        self.after_norm = nn.LayerNorm(config.output_size, eps=1e-5)

    def output_size(self) -> int:
        return self.config.output_size

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, input_size), key_mask (B, T) bool (True = real token) → (B, T, output_size)."""
        x = self.embed(x)
        pos_emb = relative_position_encoding(x.shape[1], self.config.output_size, x.dtype, x.device)
        key_bias = key_padding_bias(key_mask, x.dtype)
        for layer in self.encoders:
            x = layer(x, pos_emb, key_bias)
        return self.after_norm(x)
