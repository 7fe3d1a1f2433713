"""Export the HiFT vocoder (mel → 22.05 kHz wave) to ONNX.

    python -m export.vocoder_onnx --decoder-dir <ckpt>/Step-Audio-TTS-3B/CosyVoice-300M-25Hz [--out PATH]

I/O contract of ``vocoder.onnx`` (B = batch, T = mel frames, both dynamic; pad each row at the end):

| name | dtype | shape | meaning |
|---|---|---|---|
| ``mel`` | float32 | (B, 80, T) | log-mel, e.g. ``flow_decoder``'s ``mel`` |
| ``mel_lens`` | int64 | (B,) | real frames per row, 1…T |
| ``source_phase`` | float32 | (B, 9) | sine-source harmonic phases, radians, U(−π, π); entry 0 is ignored (fundamental phase is 0) |
| ``source_noise`` | float32 | (B, 9, 256·T) | N(0, 1) additive source noise; row i uses its first 256·mel_lens[i] samples |
| → ``wave`` | float32 | (B, 256·T) | 22 050 Hz samples in [−0.99, 0.99], zero past wave_lens |
| → ``wave_lens`` | int64 | (B,) | 256 · mel_lens |
| → ``f0`` | float32 | (B, T) | predicted f0 (Hz), zero past mel_lens: a streaming caller carries the source phase with it (``stepaudio.decoder.hift.carried_phase``) |

``stepaudio.decoder.source_phase(seed)`` / ``source_noise(seed, 256·T)`` draw the two random inputs as the library
does (``source_noise_shape(T)`` gives the shape). The STFT/iSTFT are convolutions with the DFT basis × window, so
the graph has no FFT or complex ops.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from export import fold_weight_transposes, strip_node_metadata, traced
from export.cli import export_main
from stepaudio.checkpoints import layout
from stepaudio.decoder.checkpoint import load_config, load_hift
from stepaudio.decoder.hift import HiFTGenerator
from stepaudio.decoder.token2wav import VOCODER_INPUTS, VOCODER_OUTPUTS

MAX_BATCH = 256
MAX_FRAMES = 32768


def build_vocoder_onnx(hift: HiFTGenerator) -> onnx.ModelProto:
    c = hift.config
    batch, frames = 2, 13
    inputs = (
        torch.randn(batch, c.in_channels, frames),
        torch.tensor([frames, frames - 3]),
        torch.rand(batch, c.n_harmonic_channels),
        torch.randn(batch, c.n_harmonic_channels, c.samples_per_frame * frames),
    )
    b = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    t = torch.export.Dim("n_frames", min=1, max=MAX_FRAMES)
    hift = hift.float().eval()

    def trace():
        return (torch.onnx.export(
            hift,
            inputs,
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: b, 2: t}, {0: b}, {0: b}, {0: b, 2: c.samples_per_frame * t}),
            input_names=list(VOCODER_INPUTS),
            output_names=list(VOCODER_OUTPUTS),
            optimize=False,
            verbose=False,
        ),)

    (program,) = traced("vocoder", c, (hift,), trace)
    model = onnx.ModelProto()
    model.CopyFrom(program.model_proto)  # a shared trace's program is reused: rewrite a copy
    strip_node_metadata(model.graph)
    fold_weight_transposes(model.graph)
    conv1d_as_conv2d(model.graph)
    onnx.checker.check_model(model)
    return model


def conv1d_as_conv2d(graph: onnx.GraphProto) -> int:
    """Run every 1-D ``Conv`` as a 2-D one of height 1 (Unsqueeze → Conv → Squeeze); returns how many.

    Same sums (the height-1 kernel row is the 1-D kernel), but ONNX Runtime's CPU layout optimizer only turns
    4-D convolutions into its blocked NCHWc kernels, which run these dilated wide-kernel ResBlock convolutions faster
    than its 1-D im2col path; the Squeeze/Unsqueeze are free reshapes.
    """
    axis = "conv2d/height_axis"
    nodes, rewritten = [], 0
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Conv" or len(attributes.get("kernel_shape", ())) != 1:
            nodes.append(node)
            continue
        if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{node.name}: auto_pad convolutions are not rewritten")
        out = node.output[0]
        x4, w4, y4 = f"{out}/x4", f"{out}/w4", f"{out}/y4"
        nodes.append(helper.make_node("Unsqueeze", [node.input[0], axis], [x4]))
        nodes.append(helper.make_node("Unsqueeze", [node.input[1], axis], [w4]))
        pads = list(attributes.get("pads", [0, 0]))
        conv = {
            "kernel_shape": [1, *attributes["kernel_shape"]],
            "strides": [1, *attributes.get("strides", [1])],
            "dilations": [1, *attributes.get("dilations", [1])],
            "pads": [0, pads[0], 0, pads[1]],
            "group": attributes.get("group", 1),
        }
        nodes.append(helper.make_node("Conv", [x4, w4, *node.input[2:]], [y4], name=node.name, **conv))
        nodes.append(helper.make_node("Squeeze", [y4, axis], [out]))
        rewritten += 1
    if rewritten:
        graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axis))
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def export_vocoder_onnx(decoder_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Load ``<decoder_dir>/hift.pt`` (strict) and write the ``vocoder`` ONNX graph; returns its path."""
    decoder_dir = Path(decoder_dir)
    hift = load_hift(decoder_dir, load_config(decoder_dir))
    out_path = Path(out_path) if out_path else decoder_dir / layout.VOCODER_ONNX
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_vocoder_onnx(hift), out_path)
    return out_path


def main(argv: list[str] | None = None) -> int:
    return export_main(
        export_vocoder_onnx,
        prog="python -m export.vocoder_onnx",
        description=__doc__.splitlines()[0],
        source_flag="--decoder-dir",
        source_help="a CosyVoice-300M-25Hz[-Music] folder",
        out_default=f"<decoder-dir>/{layout.VOCODER_ONNX}",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
