"""Flow-matching velocity estimator: CosyVoice's ``ConditionalDecoder`` (1-D U-Net with transformer blocks).

Parameter names match the reference (``time_mlp.linear_{1,2}``, ``down_blocks.i.{0,1.k,2}``, ``mid_blocks.i.{0,1.k}``,
``up_blocks.i.{0,1.k,2}``, ``final_block``, ``final_proj``; diffusers-style ``attn1.to_{q,k,v,out.0}``,
``ff.net.{0.proj,2}``). Two masks the reference leaves out (it only runs batch 1 without padding) are added so padded
batches are exact: GroupNorm statistics over valid frames only, and padded frames excluded as attention keys.
With no padding both reduce to the reference's plain GroupNorm and unmasked attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.decoder.config import EstimatorConfig
from stepaudio.decoder.encoder import key_padding_bias
from stepaudio.decoder.masks import masked, no_padding


@torch.library.custom_op("stepaudio::key_masked_attention", mutates_args=())
def key_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor, heads: int
) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v per head over the keys where ``key_valid`` (B, T) is True; q, k, v (B, T, heads·d).

    A custom op so the ONNX export emits one fused attention node (export/attention.py) instead of SDPA's
    decomposition. Without padding the bias is left out (adding zeros changes nothing), as the ONNX graph's If does.
    """
    bias = None if bool(key_valid.all()) else key_padding_bias(key_valid, q.dtype)
    return attention(q, k, v, bias, heads)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, heads: int) -> torch.Tensor:
    """softmax(q·kᵀ/√d + bias)·v per head; q, k, v (B, T, heads·d), bias broadcastable to (B, heads, T, T) or None.
    The eager forward calls it directly when a batch has no padding (no mask to look at: no per-call check)."""
    batch, length, _ = q.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, length, heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
    return out.transpose(1, 2).reshape(batch, length, -1)


@key_masked_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor, heads: int) -> torch.Tensor:
    return q.new_empty(q.shape[:2] + v.shape[2:])


def masked_group_norm(x: torch.Tensor, mask: torch.Tensor | None, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm whose mean/variance use only frames where ``mask`` (B, 1, T) is 1; statistics in float32.
    ``mask=None``: no padding, PyTorch's own GroupNorm."""
    if mask is None:
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    batch, channels, length = x.shape
    groups = norm.num_groups
    xg = x.float().reshape(batch, groups, channels // groups, length)
    m = mask.float().reshape(batch, 1, 1, length)
    count = m.sum(dim=(2, 3), keepdim=True) * (channels // groups)
    mean = (xg * m).sum(dim=(2, 3), keepdim=True) / count
    centered = xg - mean
    var = ((centered * m) ** 2).sum(dim=(2, 3), keepdim=True) / count
    y = (centered * torch.rsqrt(var + norm.eps)).reshape(batch, channels, length).to(x.dtype)
    return y * norm.weight[None, :, None] + norm.bias[None, :, None]


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor, scale: float = 1000.0) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        angles = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t)))


class Block1D(nn.Module):
    """Conv1d(k3) → GroupNorm(8) → Mish, zero outside the mask (``block.{0,1}`` as in the reference Sequential)."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        self.block = nn.ModuleList([nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask=None``: no padding (see ``no_padding``)."""
        h = self.block[0](masked(x, mask))
        return masked(F.mish(masked_group_norm(h, mask, self.block[1])), mask)


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int = 8):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block1D(dim, dim_out, groups)
        self.block2 = Block1D(dim_out, dim_out, groups)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(time_emb).unsqueeze(-1)
        h = self.block2(h, mask)
        return h + self.res_conv(masked(x, mask))


class Downsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Attention(nn.Module):
    """diffusers ``Attention`` as configured by the reference: q/k/v without bias, output with bias."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        """``key_valid`` (B, T) bool, or None when no key is padding (stepaudio/decoder/masks.py)."""
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        if key_valid is None:
            return self.to_out[0](attention(q, k, v, None, self.heads))
        return self.to_out[0](key_masked_attention(q, k, v, key_valid, self.heads))


class GELUProjection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), key_valid)
        return x + self.ff(self.norm3(x))


class ConditionalDecoder(nn.Module):
    def __init__(self, config: EstimatorConfig):
        super().__init__()
        channels = tuple(config.channels)
        time_dim = channels[0] * 4
        self.time_embeddings = SinusoidalPosEmb(config.in_channels)
        self.time_mlp = TimestepEmbedding(config.in_channels, time_dim)

        def transformer_blocks(dim: int) -> nn.ModuleList:
            return nn.ModuleList(
                BasicTransformerBlock(dim, config.num_heads, config.attention_head_dim) for _ in range(config.n_blocks)
            )

        self.down_blocks = nn.ModuleList()
        out_ch = config.in_channels
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            last = i == len(channels) - 1
            down = nn.Conv1d(out_ch, out_ch, 3, padding=1) if last else Downsample1D(out_ch)
            self.down_blocks.append(
                nn.ModuleList([ResnetBlock1D(in_ch, out_ch, time_dim), transformer_blocks(out_ch), down])
            )
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock1D(channels[-1], channels[-1], time_dim), transformer_blocks(channels[-1])])
            for _ in range(config.num_mid_blocks)
        )
        up_channels = channels[::-1] + (channels[0],)
        self.up_blocks = nn.ModuleList()
        for i in range(len(up_channels) - 1):
            in_ch, out_ch = up_channels[i] * 2, up_channels[i + 1]
            last = i == len(up_channels) - 2
            up = nn.Conv1d(out_ch, out_ch, 3, padding=1) if last else Upsample1D(out_ch)
            self.up_blocks.append(nn.ModuleList([ResnetBlock1D(in_ch, out_ch, time_dim), transformer_blocks(out_ch), up]))
        self.final_block = Block1D(up_channels[-1], up_channels[-1])
        self.final_proj = nn.Conv1d(up_channels[-1], config.out_channels, 1)

    @staticmethod
    def _transformers(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        key_valid = None if mask is None else mask[:, 0, :] > 0
        h = x.transpose(1, 2)
        for block in blocks:
            h = block(h, key_valid)
        return h.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        """x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80) → velocity (B, 80, T)."""
        t = self.time_mlp(self.time_embeddings(t).to(t.dtype))
        x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)

        # Masks at each resolution are gathered from the full mask (every 2nd frame) and upsampled outputs are
        # cropped with index_select, so no shape needs a min() and the export stays dynamic in T.
        hiddens = []
        masks = [mask]
        dense = no_padding(mask)  # then every mask below is all ones: ResNet and attention blocks skip masking

        def resnet_mask(m: torch.Tensor) -> torch.Tensor | None:
            return None if dense else m

        for i, (resnet, blocks, downsample) in enumerate(self.down_blocks):
            mask_down = masks[-1]
            x = self._transformers(blocks, resnet(x, resnet_mask(mask_down), t), resnet_mask(mask_down))
            hiddens.append(x)
            x = downsample(masked(x, resnet_mask(mask_down)))
            if i < len(self.down_blocks) - 1:
                every_other = torch.arange(x.shape[-1], device=x.device) * 2
                masks.append(mask_down.index_select(2, every_other))
        mask_mid = masks[-1]
        for resnet, blocks in self.mid_blocks:
            x = self._transformers(blocks, resnet(x, resnet_mask(mask_mid), t), resnet_mask(mask_mid))
        for resnet, blocks, upsample in self.up_blocks:
            mask_up = masks.pop()
            skip = hiddens.pop()
            x = torch.cat([x.index_select(2, torch.arange(skip.shape[-1], device=x.device)), skip], dim=1)
            x = self._transformers(blocks, resnet(x, resnet_mask(mask_up), t), resnet_mask(mask_up))
            x = upsample(masked(x, resnet_mask(mask_up)))
        x = self.final_block(x, resnet_mask(mask_up))
        return masked(self.final_proj(masked(x, resnet_mask(mask_up))), resnet_mask(mask))
