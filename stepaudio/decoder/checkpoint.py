"""Decoder checkpoints: strict loading of ``flow.pt`` / ``hift.pt``.

The published decoder folders (``Step-Audio-TTS-3B/CosyVoice-300M-25Hz[-Music]/``) hold ``cosyvoice.yaml``,
``flow.pt`` and ``hift.pt`` (``torch.save`` of plain state dicts; HiFT with old-style weight-norm keys), the 0-byte
``VERSION_Vq0206Vocoder_1202`` marker, and ``campplus.onnx``. The writer of tiny / real-size random trees is
``stepaudio.testing.decoder``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stepaudio.checkpoints import layout
from stepaudio.decoder.config import (
    DecoderConfig,
    load_config,  # noqa: F401 - re-exported: callers load a decoder folder's config from here
)
from stepaudio.decoder.flow import MaskedDiffWithXvec
from stepaudio.decoder.hift import HiFTGenerator


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
