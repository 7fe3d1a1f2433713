"""Checkpoint writer "decoder": the two decoder folders with random weights in the published layout.

Each folder (``Step-Audio-TTS-3B/CosyVoice-300M-25Hz[-Music]/``) gets ``cosyvoice.yaml``, ``flow.pt``, ``hift.pt``
and the 0-byte version marker with the real file names, key names and yaml format (``campplus.onnx`` comes from the
tokenizer writer). ``tiny`` has small dims, ``real`` the published dims (random weights) for CPU benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stepaudio.checkpoints import layout
from stepaudio.checkpoints.registry import register_writer
from stepaudio.decoder.checkpoint import build_flow, build_hift
from stepaudio.decoder.config import DecoderConfig, EncoderConfig, EstimatorConfig, FlowConfig, HiFTConfig
from stepaudio.testing.decoder_yaml import render_yaml


def tiny_config() -> DecoderConfig:
    """Small widths, published structure (vocab, mel bins, sample rate, kernel sizes and rates unchanged)."""
    return DecoderConfig(
        flow=FlowConfig(
            input_size=32,
            encoder=EncoderConfig(input_size=32, output_size=32, attention_heads=2, linear_units=64, num_blocks=2),
            estimator=EstimatorConfig(channels=(32, 32), attention_head_dim=16, n_blocks=1, num_mid_blocks=2, num_heads=2),
        ),
        hift=HiFTConfig(base_channels=32, f0_cond_channels=32),
    )


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Default init plus a perturbation of every tensor, so norms, biases and Snake alphas are not trivial."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("alpha", "weight_g")) or (param.ndim == 1 and "norm" in name):
                param.mul_(1 + 0.1 * noise)  # keep scales positive and near their defaults
            else:
                param.add_(0.02 * noise)


def write_decoder_dir(directory: Path, config: DecoderConfig, seed: int) -> list[Path]:
    """Write one decoder folder (yaml, flow.pt, hift.pt, version marker) with random weights from ``seed``."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow, hift = build_flow(config), build_hift(config)
    _randomise(flow, generator)
    _randomise(hift, generator)
    yaml_path = directory / layout.DECODER_YAML
    yaml_path.write_text(render_yaml(config), encoding="utf-8")
    flow_path, hift_path = directory / layout.FLOW_WEIGHTS, directory / layout.HIFT_WEIGHTS
    torch.save(flow.state_dict(), flow_path)
    torch.save(hift.state_dict(), hift_path)
    marker = directory / layout.DECODER_VERSION_MARKER
    marker.write_bytes(b"")
    return [yaml_path, flow_path, hift_path, marker]


@register_writer("decoder")
def write_decoder(root: Path, variant: str, seed: int) -> list[Path]:
    if variant not in ("tiny", "real"):
        raise ValueError(f"unknown decoder checkpoint variant {variant!r}")
    config = tiny_config() if variant == "tiny" else DecoderConfig()
    written: list[Path] = []
    for offset, folder in enumerate(layout.DECODER_DIRS):
        # The music decoder is a separately trained copy: same structure, different weights.
        written += write_decoder_dir(Path(root) / layout.TTS_DIR / folder, config, seed * 2 + offset)
    return written
