"""Export the vq02 Paraformer encoder chunk step to ONNX (the served ``tokenizer`` runs it with ONNX Runtime).

    python -m export.tokenizer_onnx --tokenizer-dir <ckpt>/Step-Audio-Tokenizer [--out PATH]

The graph is one FunASR ``forward_chunk`` step (chunk [0, 4, 5], look-back 4) with every cache as an input and an
output; I/O names, dtypes and shapes are listed in ``stepaudio/tokenizer/vq02.py``. ``T`` (new LFR frames) is
dynamic. The default output path is where ``AudioTokenizer.from_checkpoint(..., backend="onnx")`` looks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from export.cli import export_main
from stepaudio.checkpoints import layout
from stepaudio.tokenizer.funasr_files import load_paraformer_config
from stepaudio.tokenizer.onnx_export import export_onnx
from stepaudio.tokenizer.vq02 import INPUT_NAMES, OUTPUT_NAMES, load_encoder_weights

MAX_CHUNK_FRAMES = 64


def export_vq02_encoder(tokenizer_dir: Path, out_path: Path | None = None) -> Path:
    """Load ``<tokenizer_dir>/<paraformer dir>/model.pt`` and write its chunk-step ONNX graph; returns the path."""
    paraformer = Path(tokenizer_dir) / layout.PARAFORMER_DIR
    config = load_paraformer_config(paraformer / layout.PARAFORMER_CONFIG)
    encoder = load_encoder_weights(paraformer / layout.PARAFORMER_WEIGHTS, config)
    state = encoder.initial_state()
    example = (torch.randn(1, 4, config.encoder.input_size), *state.values())
    frames = torch.export.Dim("frames", min=1, max=MAX_CHUNK_FRAMES)
    dynamic = ({1: frames}, None, None, None, None)
    out_path = Path(out_path) if out_path else paraformer / layout.VQ02_ENCODER_ONNX
    return export_onnx(encoder, example, out_path, INPUT_NAMES, OUTPUT_NAMES, dynamic)


def main(argv: list[str] | None = None) -> int:
    return export_main(
        export_vq02_encoder,
        prog="python -m export.tokenizer_onnx",
        description=__doc__.splitlines()[0],
        source_flag="--tokenizer-dir",
        source_help="the Step-Audio-Tokenizer folder",
        out_default=f"<tokenizer-dir>/<paraformer dir>/{layout.VQ02_ENCODER_ONNX}",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
