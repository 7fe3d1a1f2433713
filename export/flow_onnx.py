"""Export the whole flow decoder (tokens → mel, 10 Euler steps unrolled) to one ONNX graph.

    python -m export.flow_onnx --decoder-dir <ckpt>/Step-Audio-TTS-3B/CosyVoice-300M-25Hz [--out PATH] [--portable]

Attention runs as ONNX Runtime's fused ``com.microsoft.MultiHeadAttention`` (export/attention.py; tested on the CPU
execution provider; the CUDA one implements the op too); ``--portable`` keeps standard ONNX ops only, for TensorRT's own
parser (export/tensorrt.py).

I/O contract of ``flow_decoder.onnx`` (B = batch, every length dynamic; pad each row at the end, any pad value):

| name | dtype | shape | meaning |
|---|---|---|---|
| ``tokens`` | int64 | (B, N) | target decoder ids 0…5119 (LLM id − 65536), 2:3 interleaved |
| ``token_lens`` | int64 | (B,) | real target ids per row, 1…N |
| ``prompt_tokens`` | int64 | (B, P) | the voice prompt's decoder ids (P may be 0) |
| ``prompt_token_lens`` | int64 | (B,) | real prompt ids per row (0 ⇔ prompt_mel_lens 0) |
| ``prompt_mel`` | float32 | (B, P_mel, 80) | the voice prompt's log-mel (``Token2Wav.prompt_mel``) |
| ``prompt_mel_lens`` | int64 | (B,) | real prompt frames per row |
| ``speaker_embedding`` | float32 | (B, 192) | CAM++ embedding (L2-normalised inside) |
| ``noise`` | float32 | (B, 80, P_mel + mel_frames(N)) | N(0, 1); row i uses columns [0, prompt_mel_lens[i] + mel_frames(token_lens[i])) |
| → ``mel`` | float32 | (B, 80, mel_frames(N)) | target mel, zero past mel_lens |
| → ``mel_lens`` | int64 | (B,) | mel_frames(token_lens) = int(n / 41.667 × 22050 / 256) |

``mel_frames`` is ``stepaudio.decoder.mel_frames_for_tokens``; one request's noise shape is
``stepaudio.decoder.flow_noise_shape(prompt frames, n tokens)`` and ``stepaudio.decoder.flow_noise(seed, width)``
draws it. The output feeds ``vocoder.onnx`` directly (``mel`` → ``mel``, ``mel_lens`` → ``mel_lens``).

How the graph is built: the dynamo exporter's cost grows steeply with graph size and dynamic dims (the tiny flow with
the loop unrolled in PyTorch took >10 min; the real one would take hours), so three parts are exported once each —
``prepare`` (speaker affine, Conformer, length regulator, cond), one guided Euler ``step`` (the U-Net, run on the
2B-row CFG batch) and ``select_target`` — and stitched into one graph here: the step's nodes are repeated 10 times
with that step's (t, dt) as constants, all copies sharing one set of weights (weight transposes are folded first,
so ONNX Runtime does not fold one copy per step). ``MaskedDiffWithXvec.forward`` runs the same three parts, so the
graph computes exactly what the library does. At real size the file holds one copy of the weights (~430 MB).

Why one graph rather than the estimator alone with the Euler loop in the caller: the compute is identical (the loop
adds 10 session calls per request, milliseconds against seconds), and one graph makes ``flow_decoder`` a plain
Triton ONNX Runtime / TensorRT model — inputs in, mel out — with no Python in the loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import torch
from onnx import helper, numpy_helper

from export import attention, fold_weight_transposes, strip_node_metadata, traced
from export.cli import export_main
from stepaudio.checkpoints import layout
from stepaudio.decoder.checkpoint import load_config, load_flow
from stepaudio.decoder.flow import MaskedDiffWithXvec
from stepaudio.decoder.token2wav import FLOW_INPUTS

_STATE = ["mask", "mu", "spks", "cond", "prompt_frames", "target_frames"]
MAX_BATCH = 256
MAX_TOKENS = 8192
MAX_FRAMES = 32768


class _Prepare(torch.nn.Module):
    def __init__(self, flow: MaskedDiffWithXvec):
        super().__init__()
        self.flow = flow

    def forward(
        self, tokens, token_lens, prompt_tokens, prompt_token_lens, prompt_mel, prompt_mel_lens, speaker_embedding, noise
    ):
        return self.flow.prepare(
            tokens, token_lens, prompt_tokens, prompt_token_lens, prompt_mel, prompt_mel_lens, speaker_embedding, noise
        )


class _Step(torch.nn.Module):
    def __init__(self, flow: MaskedDiffWithXvec):
        super().__init__()
        self.decoder = flow.decoder

    def forward(self, x, mask, mu, spks, cond, t, dt):
        return self.decoder.step(x, mask, mu, spks, cond, t, dt)


class _Select(torch.nn.Module):
    def forward(self, x, prompt_mel, prompt_frames, target_frames):
        return MaskedDiffWithXvec.select_target(x, prompt_mel, prompt_frames, target_frames)


def _export(module: torch.nn.Module, args: tuple, dynamic_shapes, input_names, output_names, table=None):
    return torch.onnx.export(
        module.eval(),
        args,
        dynamo=True,
        external_data=False,
        dynamic_shapes=dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        custom_translation_table=table,
        optimize=False,
        verbose=False,
    )


def _rename_graph(graph: onnx.GraphProto, rename) -> None:
    """Apply ``rename`` to every value name in ``graph`` and its subgraphs (empty optional names stay empty)."""

    def fix(name: str) -> str:
        return rename(name) if name else name

    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = fix(value.name)
    for tensor in graph.initializer:
        tensor.name = fix(tensor.name)
    for node in graph.node:
        node.input[:] = [fix(n) for n in node.input]
        node.output[:] = [fix(n) for n in node.output]
        if node.name:
            node.name = rename(node.name)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attribute.g, rename)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _rename_graph(sub, rename)


def _renamed(model: onnx.ModelProto, prefix: str, mapping: dict[str, str]) -> onnx.GraphProto:
    """Copy of ``model.graph`` with the names in ``mapping`` mapped and every other name prefixed."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    _rename_graph(graph, lambda n: mapping.get(n, prefix + n))
    return graph


def stitch(
    prepare: onnx.ModelProto, step: onnx.ModelProto, select: onnx.ModelProto, schedule: list[tuple[float, float]]
) -> onnx.ModelProto:
    """One graph: prepare → step × len(schedule) (constants t, dt; weights shared) → select.

    The parts' graphs are modified in place (weight transposes folded).
    """
    if any(part.functions for part in (prepare, step, select)):
        raise ValueError("the exported parts define ONNX local functions; stitching does not merge them")
    for part in (prepare, step, select):
        fold_weight_transposes(part.graph)
    # Before the step is repeated: each fused attention skips its mask when the batch has no padding.
    attention.unmask_when_unpadded(step.graph)
    nodes, initializers = [], []

    # prepare: graph inputs keep their names; its target_frames output is the graph's mel_lens.
    state = {name: f"prepare/{name}" for name in _STATE}
    state["target_frames"] = "mel_lens"
    mapping = {n: n for n in FLOW_INPUTS}
    mapping.update(zip([o.name for o in prepare.graph.output], state.values()))
    graph = _renamed(prepare, "prepare/", mapping)
    nodes += graph.node
    initializers += graph.initializer

    # step × N: x starts as the noise input; weights (and other initializers) are stored once under "step/".
    step_inputs = [i.name for i in step.graph.input]  # x, mask, mu, spks, cond, t, dt
    step_output = step.graph.output[0].name
    shared = {t.name: "step/" + t.name for t in step.graph.initializer}
    initializers += [_renamed_tensor(t, shared[t.name]) for t in step.graph.initializer]
    x = "noise"
    for k, (t, dt) in enumerate(schedule):
        t_name, dt_name = f"step{k}/t", f"step{k}/dt"
        initializers += [numpy_helper.from_array(t, t_name), numpy_helper.from_array(dt, dt_name)]
        mapping = dict(zip(step_inputs, [x, state["mask"], state["mu"], state["spks"], state["cond"], t_name, dt_name]))
        mapping[step_output] = f"step{k}/x_next"
        mapping.update(shared)
        nodes += _renamed(step, f"step{k}/", mapping).node
        x = f"step{k}/x_next"

    select_inputs = [i.name for i in select.graph.input]  # x, prompt_mel, prompt_frames, target_frames
    mapping = dict(zip(select_inputs, [x, "prompt_mel", state["prompt_frames"], state["target_frames"]]))
    mapping[select.graph.output[0].name] = "mel"
    graph = _renamed(select, "select/", mapping)
    nodes += graph.node
    initializers += graph.initializer

    outputs = []
    for name, value in (("mel", select.graph.output[0]), ("mel_lens", prepare.graph.output[_STATE.index("target_frames")])):
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        copy.name = name
        outputs.append(copy)
    merged = helper.make_graph(nodes, "flow_decoder", list(prepare.graph.input), outputs, initializers)
    strip_node_metadata(merged)
    opsets = {}
    for part in (prepare, step, select):
        for opset in part.opset_import:
            opsets[opset.domain] = max(opset.version, opsets.get(opset.domain, 0))
    model = helper.make_model(merged, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = prepare.ir_version
    onnx.checker.check_model(model)
    return model


def _renamed_tensor(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def build_flow_onnx(flow: MaskedDiffWithXvec, portable: bool = False) -> onnx.ModelProto:
    """The stitched ``flow_decoder`` graph for a loaded (float32) flow module.

    Attention is ONNX Runtime's fused ``com.microsoft.MultiHeadAttention`` (export/attention.py); ``portable`` keeps
    standard ONNX ops only (for TensorRT's own parser), at ONNX Runtime's old speed."""
    config = flow.config
    flow = flow.float().eval()
    batch, n_tok, n_prompt, n_pmel = 2, 23, 11, 19
    n_mel = n_pmel + config.mel_frames_for_tokens(n_tok)
    inputs = (
        torch.randint(0, config.vocab_size, (batch, n_tok)),
        torch.tensor([n_tok, n_tok - 4]),
        torch.randint(0, config.vocab_size, (batch, n_prompt)),
        torch.tensor([n_prompt, n_prompt - 2]),
        torch.randn(batch, n_pmel, config.output_size),
        torch.tensor([n_pmel, n_pmel - 3]),
        torch.randn(batch, config.spk_embed_dim),
        torch.randn(batch, config.output_size, n_mel),
    )
    Dim = torch.export.Dim
    b = Dim("batch", min=1, max=MAX_BATCH)
    n = Dim("n_tokens", min=1, max=MAX_TOKENS)
    p = Dim("n_prompt_tokens", min=0, max=MAX_TOKENS)
    pm = Dim("n_prompt_frames", min=0, max=MAX_FRAMES)
    m = Dim("n_frames", min=3, max=MAX_FRAMES)
    with torch.no_grad():
        state = flow.prepare(*inputs)
    schedule = flow.decoder.time_steps(torch.float32)
    t, dt = schedule[0]
    noise = inputs[-1]
    parts = (_Prepare(flow), _Step(flow), _Select())
    table = attention.translation_table(portable)

    def trace():
        prepare = _export(
            parts[0],
            inputs,
            ({0: b, 1: n}, {0: b}, {0: b, 1: p}, {0: b}, {0: b, 1: pm}, {0: b}, {0: b}, {0: b, 2: m}),
            list(FLOW_INPUTS),
            _STATE,
        )
        step_dims = ({0: b, 2: m}, {0: b, 2: m}, {0: b, 2: m}, {0: b}, {0: b, 2: m}, None, None)
        step = _export(
            parts[1],
            (noise, *state[:4], t, dt),
            step_dims,
            ["x", "mask", "mu", "spks", "cond", "t", "dt"],
            ["x_next"],
            table,
        )
        select = _export(
            parts[2],
            (noise, inputs[4], state[4], state[5]),
            ({0: b, 2: m}, {0: b, 1: pm}, {0: b}, {0: b}),
            ["x", "prompt_mel", "prompt_frames", "target_frames"],
            ["mel"],
        )
        return prepare, step, select

    programs = traced("flow" + ("/portable" if portable else ""), config, parts, trace)
    return stitch(*(program.model_proto for program in programs), [(t.numpy(), dt.numpy()) for t, dt in schedule])


def export_flow_onnx(decoder_dir: str | Path, out_path: str | Path | None = None, portable: bool = False) -> Path:
    """Load ``<decoder_dir>/flow.pt`` (strict) and write the ``flow_decoder`` ONNX graph; returns its path."""
    decoder_dir = Path(decoder_dir)
    flow = load_flow(decoder_dir, load_config(decoder_dir))
    out_path = Path(out_path) if out_path else decoder_dir / layout.FLOW_DECODER_ONNX
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_flow_onnx(flow, portable), out_path)
    return out_path


def main(argv: list[str] | None = None) -> int:
    # --portable: standard ONNX ops only (TensorRT); the shared CLI has no per-exporter flags, so it is taken here.
    argv = list(sys.argv[1:] if argv is None else argv)
    portable = "--portable" in argv
    argv = [a for a in argv if a != "--portable"]
    return export_main(
        lambda source, out: export_flow_onnx(source, out, portable),
        prog="python -m export.flow_onnx",
        description=__doc__.splitlines()[0],
        source_flag="--decoder-dir",
        source_help="a CosyVoice-300M-25Hz[-Music] folder",
        out_default=f"<decoder-dir>/{layout.FLOW_DECODER_ONNX}",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
