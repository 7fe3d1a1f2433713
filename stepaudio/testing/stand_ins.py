"""Small torch models that compute what the published ONNX files compute, for the checkpoint writer.

``SemanticStandIn`` mirrors ``speech_tokenizer_v1.onnx`` (docs/checkpoints.md#audio-tokenizer-folder): two stride-2 convolutions with GELU
(÷4 → 25 Hz), a learned position table, Whisper-style pre-LN attention blocks (q/v/out with bias, k without, q and k
each scaled by head_dim^-¼, GELU MLP ×4), L2 normalisation and the nearest code of a (dim, 4096) codebook. Inputs are
named and typed like the real graph: ``feats`` (1, 128, T) float32, ``feats_length`` (1,) int32 → ``indices``.
Initialisers are named ``encoders.*`` like the real ones (``encoders.conv1.weight``, ``encoders.positional_embedding``).

``CampplusStandIn`` maps ``input`` (1, T, 80) fbank to ``output`` (1, 192) like ``campplus.onnx``: a dilated TDNN with
statistics pooling and a linear embedding layer (much smaller than the real CAM++, same interface).
"""

from __future__ import annotations

import torch
from torch import nn

VQ06_CODEBOOK_SIZE = 4096
VQ06_POSITIONS = 1500
EMBEDDING_DIM = 192


def conv_output_length(length: torch.Tensor) -> torch.Tensor:
    return (length - 1) // 2 + 1  # kernel 3, stride 2, padding 1


class WhisperAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, bias):
        b, t, d = x.shape
        scale = (d // self.heads) ** -0.25

        def split(y):
            return y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)) * scale, split(self.key(x)) * scale, split(self.value(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class WhisperBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn_ln = nn.LayerNorm(dim)
        self.attn = WhisperAttention(dim, heads)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, bias):
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class SemanticEncoder(nn.Module):
    def __init__(self, n_mels: int, dim: int, heads: int, layers: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.positional_embedding = nn.Parameter(torch.randn(VQ06_POSITIONS, dim) * 0.02)
        self.blocks = nn.ModuleList([WhisperBlock(dim, heads) for _ in range(layers)])
        with torch.no_grad():
            # zero-mean random filters: they respond to spectral shape rather than to the features' constant offset,
            # so (like a trained model's) the codes change with the audio instead of collapsing onto one code
            for conv in (self.conv1, self.conv2):
                weight = torch.randn_like(conv.weight) / conv.weight[0].numel() ** 0.5
                conv.weight.copy_(weight - weight.mean(dim=(1, 2), keepdim=True))
                conv.bias.zero_()


class SemanticStandIn(nn.Module):
    def __init__(self, n_mels: int = 128, dim: int = 1280, heads: int = 20, layers: int = 6):
        super().__init__()
        self.encoders = SemanticEncoder(n_mels, dim, heads, layers)
        # unit-norm codes, like the k-means centres of unit-norm features
        self.codebook = nn.Parameter(nn.functional.normalize(torch.randn(dim, VQ06_CODEBOOK_SIZE), dim=0))

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
        enc = self.encoders
        length = feats_length.to(torch.int64)
        x = feats * (torch.arange(feats.shape[2]) < length[:, None])[:, None, :]
        x = nn.functional.gelu(enc.conv1(x))
        length = conv_output_length(length)
        x = x * (torch.arange(x.shape[2]) < length[:, None])[:, None, :]
        x = nn.functional.gelu(enc.conv2(x))
        length = conv_output_length(length)
        x = x.transpose(1, 2) + enc.positional_embedding[: x.shape[2]]
        padding = torch.arange(x.shape[1]) >= length[:, None]
        bias = torch.zeros(padding.shape).masked_fill(padding, torch.finfo(torch.float32).min)[:, None, None, :]
        for block in enc.blocks:
            x = block(x, bias)
        x = nn.functional.normalize(x, dim=-1)
        distances = (self.codebook**2).sum(0) - 2 * x @ self.codebook  # |x|² = 1 for every code
        return distances.argmin(dim=-1).to(torch.int32)


class CampplusStandIn(nn.Module):
    def __init__(self, channels: int = 64, feat_dim: int = 80):
        super().__init__()
        self.tdnn = nn.Sequential(
            nn.Conv1d(feat_dim, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.dense = nn.Linear(2 * channels, EMBEDDING_DIM)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        hidden = self.tdnn(feats.transpose(1, 2))
        std = (hidden.var(dim=-1, correction=0) + 1e-5).sqrt()
        stats = torch.cat([hidden.mean(dim=-1), std], dim=-1)
        return self.dense(stats)
