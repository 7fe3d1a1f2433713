"""Checkpoint writer "tokenizer": the audio tokenizer files and ``campplus.onnx`` in the published layout.

Writes (random weights, real file names, formats, key names and config keys)::

    Step-Audio-Tokenizer/linguistic_tokenizer.npy                     (1024, D) float32 k-means codebook
    Step-Audio-Tokenizer/speech_tokenizer_v1.onnx                     feats, feats_length → indices
    Step-Audio-Tokenizer/<paraformer dir>/config.yaml, am.mvn, model.pt  FunASR ParaformerStreaming folder
    Step-Audio-TTS-3B/CosyVoice-300M-25Hz{,-Music}/campplus.onnx      input (1, T, 80) → output (1, 192)

``model.pt`` is a plain state dict: the ``encoder.*`` tensors of Appendix A plus a few ``decoder.*``/``predictor.*``
tensors standing in for the parts the tokenizer ignores. Variant "tiny" has small dims; "real" has the published
encoder dims (Paraformer 50 × 512, vq06 6 × 1280; CAM++ stays small) for CPU benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from stepaudio.checkpoints import layout, register_writer
from stepaudio.testing.stand_ins import CampplusStandIn, SemanticStandIn
from stepaudio.tokenizer.funasr_files import EncoderConfig, FrontendConfig
from stepaudio.tokenizer.onnx_export import export_onnx
from stepaudio.tokenizer.sanm import SanmEncoder

VQ02_CODEBOOK_ROWS = 1024


@dataclass(frozen=True)
class Dims:
    paraformer_size: int
    paraformer_heads: int
    paraformer_ffn: int
    paraformer_blocks: int
    vq06_size: int
    vq06_heads: int
    vq06_blocks: int
    campplus_channels: int


DIMS = {
    "tiny": Dims(64, 4, 128, 3, 64, 4, 2, 32),
    "real": Dims(512, 4, 2048, 50, 1280, 20, 6, 128),
}


def paraformer_config_yaml(dims: Dims) -> dict:
    """The keys of the published ``config.yaml`` that matter for inference, FunASR spelling included."""
    frontend = FrontendConfig()
    return {
        "model": "ParaformerStreaming",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True, "predictor_weight": 1.0,
                       "predictor_bias": 1, "sampling_ratio": 0.75},
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            "output_size": dims.paraformer_size, "attention_heads": dims.paraformer_heads,
            "linear_units": dims.paraformer_ffn, "num_blocks": dims.paraformer_blocks, "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1, "input_layer": "pe_online",
            "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True, "kernel_size": 11,
            "sanm_shfit": 0, "selfattention_layer_type": "sanm", "chunk_size": [12, 15], "stride": [8, 10],
            "pad_left": [0, 0], "encoder_att_look_back_factor": [4, 4], "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"attention_heads": dims.paraformer_heads, "linear_units": dims.paraformer_ffn,
                         "num_blocks": 16, "att_layer_num": 16, "kernel_size": 11, "sanm_shfit": 5},
        "predictor": "CifPredictorV2",
        "predictor_conf": {"idim": dims.paraformer_size, "threshold": 1.0, "l_order": 1, "r_order": 1,
                           "tail_threshold": 0.45},
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": frontend.sample_rate, "window": frontend.window, "n_mels": frontend.n_mels,
                          "frame_length": int(frontend.frame_length_ms), "frame_shift": int(frontend.frame_shift_ms),
                          "lfr_m": frontend.lfr_m, "lfr_n": frontend.lfr_n},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "normalize": None,
    }


def am_mvn_text(shift: np.ndarray, scale: np.ndarray) -> str:
    dim = shift.shape[0]

    def vector(values):
        return " ".join(f"{v:.6f}" for v in values)

    return (
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {vector(shift)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {vector(scale)} ]\n</Nnet>\n"
    )


def _write_paraformer(folder: Path, dims: Dims, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / layout.PARAFORMER_CONFIG
    config_path.write_text(yaml.safe_dump(paraformer_config_yaml(dims), sort_keys=False), encoding="utf-8")

    frontend = FrontendConfig()
    # log-mel statistics of speech at the ×32768 scale: means ~8…15 falling with frequency, std ~2.5…4.5
    means = np.linspace(15.0, 8.0, frontend.n_mels) + rng.normal(0.0, 0.5, frontend.n_mels)
    stds = rng.uniform(2.5, 4.5, frontend.n_mels)
    cmvn_path = folder / layout.PARAFORMER_CMVN
    cmvn_path.write_text(am_mvn_text(np.tile(-means, frontend.lfr_m), np.tile(1.0 / stds, frontend.lfr_m)))

    encoder = SanmEncoder(
        EncoderConfig(
            input_size=frontend.feature_dim,
            output_size=dims.paraformer_size,
            attention_heads=dims.paraformer_heads,
            linear_units=dims.paraformer_ffn,
            num_blocks=dims.paraformer_blocks,
        )
    )
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items() if k != "inv_timescales"}
    state["decoder.embed.0.weight"] = torch.randn(8, dims.paraformer_size)  # parts the tokenizer ignores
    state["predictor.cif_output.weight"] = torch.randn(1, dims.paraformer_size)
    weights_path = folder / layout.PARAFORMER_WEIGHTS
    torch.save(state, weights_path)
    return [config_path, cmvn_path, weights_path]


def _write_semantic(path: Path, dims: Dims) -> Path:
    model = SemanticStandIn(dim=dims.vq06_size, heads=dims.vq06_heads, layers=dims.vq06_blocks)
    frames = torch.export.Dim("frames", min=4, max=3000)
    example = (torch.randn(1, 128, 400), torch.tensor([400], dtype=torch.int32))
    return export_onnx(model, example, path, ["feats", "feats_length"], ["indices"], ({2: frames}, None))


def _write_campplus(path: Path, dims: Dims) -> Path:
    model = CampplusStandIn(channels=dims.campplus_channels)
    frames = torch.export.Dim("frames", min=2, max=100_000)
    return export_onnx(model, (torch.randn(1, 300, 80),), path, ["input"], ["output"], ({1: frames},))


@register_writer("tokenizer")
def write_tokenizer(root: Path, variant: str, seed: int) -> list[Path]:
    if variant not in DIMS:
        raise ValueError(f"unknown tokenizer checkpoint variant {variant!r}; expected one of {sorted(DIMS)}")
    dims = DIMS[variant]
    root = Path(root)
    tokenizer_dir = root / layout.TOKENIZER_DIR
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        codebook_path = tokenizer_dir / layout.LINGUISTIC_CODEBOOK
        np.save(codebook_path, rng.standard_normal((VQ02_CODEBOOK_ROWS, dims.paraformer_size)).astype(np.float32))
        written = [codebook_path]
        written += _write_paraformer(tokenizer_dir / layout.PARAFORMER_DIR, dims, rng)
        written.append(_write_semantic(tokenizer_dir / layout.SEMANTIC_TOKENIZER_ONNX, dims))
        campplus = _write_campplus(root / layout.TTS_DIR / layout.DECODER_DIRS[0] / layout.CAMPPLUS_ONNX, dims)
        written.append(campplus)
        for decoder_dir in layout.DECODER_DIRS[1:]:  # the real tree ships the same file in each decoder folder
            copy = root / layout.TTS_DIR / decoder_dir / layout.CAMPPLUS_ONNX
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(campplus.read_bytes())
            written.append(copy)
    return written
