"""Reading the FunASR Paraformer folder: ``config.yaml`` (front end + encoder dims) and ``am.mvn`` (CMVN).

``am.mvn`` is a Kaldi nnet1 text file; FunASR takes the bracketed vector after ``<AddShift>`` as the shift (negated
means) and the one after ``<Rescale>`` as the scale (inverse std), applied to the 560-dim LFR features as
``(x + shift) * scale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

SUPPORTED_FRONTEND = "WavFrontendOnline"
SUPPORTED_ENCODER = "SANMEncoderChunkOpt"


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    window: str = "hamming"
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    lfr_m: int = 7
    lfr_n: int = 6
    dither: float = 1.0  # FunASR's default when config.yaml does not set it
    snip_edges: bool = True
    upscale_samples: bool = True  # FunASR ``upsacle_samples``: fbank of the waveform ×32768

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def feature_dim(self) -> int:
        return self.n_mels * self.lfr_m


@dataclass(frozen=True)
class EncoderConfig:
    input_size: int = 560
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50
    kernel_size: int = 11
    sanm_shift: int = 0  # FunASR ``sanm_shfit``

    @property
    def head_dim(self) -> int:
        return self.output_size // self.attention_heads


@dataclass(frozen=True)
class ParaformerConfig:
    frontend: FrontendConfig
    encoder: EncoderConfig


def load_paraformer_config(path: Path) -> ParaformerConfig:
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    if raw.get("frontend") != SUPPORTED_FRONTEND or raw.get("encoder") != SUPPORTED_ENCODER:
        raise ValueError(
            f"{path}: expected frontend {SUPPORTED_FRONTEND} and encoder {SUPPORTED_ENCODER}, "
            f"got {raw.get('frontend')} / {raw.get('encoder')}"
        )
    fe, enc = raw.get("frontend_conf") or {}, raw.get("encoder_conf") or {}
    if enc.get("input_layer", "pe_online") != "pe_online" or enc.get("selfattention_layer_type", "sanm") != "sanm":
        raise ValueError(f"{path}: only input_layer pe_online with sanm self-attention is supported")
    if not enc.get("normalize_before", True):
        raise ValueError(f"{path}: only pre-norm (normalize_before: true) encoders are supported")
    frontend = FrontendConfig(
        sample_rate=int(fe.get("fs", 16000)),
        window=str(fe.get("window", "hamming")),
        n_mels=int(fe.get("n_mels", 80)),
        frame_length_ms=float(fe.get("frame_length", 25)),
        frame_shift_ms=float(fe.get("frame_shift", 10)),
        lfr_m=int(fe.get("lfr_m", 1)),
        lfr_n=int(fe.get("lfr_n", 1)),
        dither=float(fe.get("dither", 1.0)),
        snip_edges=bool(fe.get("snip_edges", True)),
        upscale_samples=bool(fe.get("upsacle_samples", True)),
    )
    encoder = EncoderConfig(
        input_size=frontend.feature_dim,
        output_size=int(enc.get("output_size", 256)),
        attention_heads=int(enc.get("attention_heads", 4)),
        linear_units=int(enc.get("linear_units", 2048)),
        num_blocks=int(enc.get("num_blocks", 6)),
        kernel_size=int(enc.get("kernel_size", 11)),
        sanm_shift=int(enc.get("sanm_shfit", 0)),
    )
    if encoder.output_size % encoder.attention_heads:
        raise ValueError(f"{path}: output_size {encoder.output_size} is not divisible by {encoder.attention_heads} heads")
    return ParaformerConfig(frontend=frontend, encoder=encoder)


def _bracketed_vector(tokens: list[str], tag: str, path: Path) -> np.ndarray:
    try:
        start = tokens.index("[", tokens.index(tag)) + 1
        end = tokens.index("]", start)
    except ValueError:
        raise ValueError(f"{path}: no '{tag} … [ values ]' block") from None
    return np.asarray(tokens[start:end], dtype=np.float32)


def load_cmvn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) vectors from a Kaldi nnet ``am.mvn``."""
    tokens = Path(path).read_text(encoding="utf-8").split()
    shift, scale = _bracketed_vector(tokens, "<AddShift>", path), _bracketed_vector(tokens, "<Rescale>", path)
    if shift.shape != scale.shape:
        raise ValueError(f"{path}: <AddShift> has {shift.size} values but <Rescale> has {scale.size}")
    return shift, scale
