"""Decoder checkpoints: strict loading of ``flow.pt`` / ``hift.pt`` and the writer of tiny / real-size trees.

The published decoder folders (``Step-Audio-TTS-3B/CosyVoice-300M-25Hz[-Music]/``) hold ``cosyvoice.yaml``,
``flow.pt`` and ``hift.pt`` (``torch.save`` of plain state dicts; HiFT with old-style weight-norm keys), the 0-byte
``VERSION_Vq0206Vocoder_1202`` marker, and ``campplus.onnx`` (written by the audio component's writer). The writer
here emits the first four with the real file names, key names and yaml format: ``tiny`` has small dims, ``real``
the published dims (flow 105,399,040 and HiFT 20,460,591 parameters, random weights) for CPU benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stepaudio.checkpoints import layout
from stepaudio.checkpoints.registry import register_writer
from stepaudio.decoder.config import (
    DecoderConfig,
    EncoderConfig,
    EstimatorConfig,
    FlowConfig,
    HiFTConfig,
    load_config,  # noqa: F401 - re-exported: callers load a decoder folder's config from here
    render_yaml,
)
from stepaudio.decoder.flow import MaskedDiffWithXvec
from stepaudio.decoder.hift import HiFTGenerator


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


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_flow(config: DecoderConfig, device: str | torch.device = "cpu") -> MaskedDiffWithXvec:
    """Build the flow module; ``device="meta"`` allocates nothing (parameter counting)."""
    with torch.device(device):
        return MaskedDiffWithXvec(config.flow)


def build_hift(config: DecoderConfig, device: str | torch.device = "cpu") -> HiFTGenerator:
    with torch.device(device):
        return HiFTGenerator(config.hift)


def _strict_load(module: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched[:8]}")
    if problems:
        raise ValueError(f"{path} does not match the config: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def load_flow(
    decoder_dir: str | Path,
    config: DecoderConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MaskedDiffWithXvec:
    config = config or load_config(decoder_dir)
    flow = build_flow(config)
    _strict_load(flow, Path(decoder_dir) / layout.FLOW_WEIGHTS)
    return flow.to(device=device, dtype=dtype).eval()


def load_hift(
    decoder_dir: str | Path, config: DecoderConfig | None = None, device: str | torch.device = "cpu"
) -> HiFTGenerator:
    """HiFT stays float32, as in the reference."""
    config = config or load_config(decoder_dir)
    hift = build_hift(config)
    _strict_load(hift, Path(decoder_dir) / layout.HIFT_WEIGHTS)
    return hift.to(device=device).eval()


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
