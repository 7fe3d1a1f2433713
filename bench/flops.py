"""FLOPs of one token2wav request, counted on the PyTorch runner with ``torch.utils.flop_counter``.

PyTorch's counter knows matmuls, convolutions and its CUDA attention kernels, but neither our custom op
``stepaudio::key_masked_attention`` (stepaudio/decoder/estimator.py) nor the CPU flash kernel the eager forward
calls for a batch without padding: counted bare, the U-Net's attention — q·kᵀ and the weighted sum of v,
4·B·T²·(heads·d) per call — is missing. For 10 s of speech + a 3 s prompt that is 1.13 of the
flow's 3.09 TFLOP; the first performance issue's "2.48 TFLOP per 10 s" was that bare count (flow 1.96 + HiFT 0.52).
The formulas registered here put it back, so every "% of the matmul peak" this folder reports uses the whole work.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from bench.token2wav_requests import requests_for
from stepaudio.decoder import (
    DecoderNoise,
    Token2Wav,
    Token2WavRequest,
    estimator,  # noqa: F401 - registers torch.ops.stepaudio.key_masked_attention
)


@register_flop_formula(torch.ops.stepaudio.key_masked_attention)
def _key_masked_attention_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    batch, queries, inner = q_shape
    keys = k_shape[1]
    return 2 * batch * queries * keys * inner + 2 * batch * queries * keys * v_shape[2]


# The eager forward of a batch without padding calls scaled_dot_product_attention directly; PyTorch's counter has
# formulas for its CUDA kernels only, not the CPU flash kernel. (B, heads, T, d) per tensor.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, queries, dim = q_shape
    keys = k_shape[2]
    return 2 * batch * heads * queries * keys * dim + 2 * batch * heads * queries * keys * v_shape[3]


def token2wav_gflop(decoder: Token2Wav, requests: list[Token2WavRequest], noises: list[DecoderNoise]) -> tuple[float, float]:
    """(flow GFLOP, vocoder GFLOP) of one batch through ``decoder`` (a float32 PyTorch runner; runs it once)."""
    with FlopCounterMode(display=False) as flow_count:
        mels = decoder.token2mel(requests, [n.flow for n in noises])
    with FlopCounterMode(display=False) as vocoder_count:
        decoder.mel2wav(mels, [n.source_phase for n in noises], [n.source_noise for n in noises])
    return flow_count.get_total_flops() / 1e9, vocoder_count.get_total_flops() / 1e9


def request_gflop(decoder: Token2Wav, seconds: float) -> float:
    """Total GFLOP of one batch-1 request of ``seconds`` of speech + the 3 s prompt (``token2wav_requests``)
    through ``decoder`` (a float32 PyTorch runner; runs it once)."""
    requests = requests_for(1, seconds)
    noises = [DecoderNoise.from_seed(0, r.prompt_mel.shape[0], r.tokens.size, decoder.config) for r in requests]
    return sum(token2wav_gflop(decoder, requests, noises))
