"""The flow U-Net's attention as one ONNX Runtime ``com.microsoft.MultiHeadAttention`` node per layer.

The library's attention (``stepaudio.decoder.estimator.key_masked_attention``) is a torch custom op; at export it is
translated here into ``MultiHeadAttention`` (q/k/v in (B, T, heads·d), key padding mask (B, T) int32, masked scores
set to float32's lowest value as the library's additive bias does), instead of the exporter's SDPA decomposition
(MatMul, mask Add, Softmax, MatMul and a dozen Reshape/Transpose nodes over the (B, heads, T, T) scores).

``unmask_when_unpadded`` then wraps each such node in an ``If``: when no key in the batch is padding (every batch of
one request), the node runs without the mask, which lets ORT take its flash-attention kernel (the mask input
disables it); with padding the masked node runs. Both compute the same softmax(q·kᵀ/√d)·v (within fp32 rounding).

ORT's contrib op has no ONNX schema; ``register_schema`` registers the subset used here so the exporter's onnxscript
builder and ``onnx.checker`` accept it. A graph holding it runs on ONNX Runtime (tested on CPU), not on TensorRT's own
ONNX parser (``portable=True`` in the flow exporter keeps the plain decomposition for that).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.defs import OpSchema

DOMAIN = "com.microsoft"
OP = "MultiHeadAttention"
_MASK_FILTER = float(np.finfo(np.float32).min)


def register_schema() -> None:
    """Register the (subset of the) contrib op's schema once per process."""
    if onnx.defs.has(OP, DOMAIN):
        return
    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        OP,
        DOMAIN,
        1,
        inputs=[
            param("query", "T"),
            param("key", "T"),
            param("value", "T"),
            param("bias", "T", param_option=optional),
            param("key_padding_mask", "M", param_option=optional),
        ],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[
            OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "", required=True),
            OpSchema.Attribute("mask_filter_value", OpSchema.AttrType.FLOAT, "", required=False),
        ],
    )
    onnx.defs.register_schema(schema)


def translation_table(portable: bool = False) -> dict:
    """``custom_translation_table`` entry for ``torch.onnx.export``: the library op → MultiHeadAttention, or with
    ``portable`` the same math in standard ONNX ops (for TensorRT's parser)."""
    import torch
    from onnxscript import opset18 as op
    from onnxscript.values import Opset

    import stepaudio.decoder.estimator  # noqa: F401 - defines the custom op

    register_schema()
    ms = Opset(DOMAIN, 1)

    def fused(q, k, v, key_valid, heads: int):
        mask = op.Cast(key_valid, to=TensorProto.INT32)
        return ms.MultiHeadAttention(q, k, v, None, mask, num_heads=heads, mask_filter_value=_MASK_FILTER)

    def plain(q, k, v, key_valid, heads: int):
        # (B, T, heads·d) → (B, heads, T, d); the additive key bias as in the library.
        split = op.Concat(op.Shape(q, start=0, end=2), op.Constant(value_ints=[heads, -1]), axis=0)
        qh = op.Transpose(op.Reshape(q, split), perm=[0, 2, 1, 3])
        kt = op.Transpose(op.Reshape(k, split), perm=[0, 2, 3, 1])
        vh = op.Transpose(op.Reshape(v, split), perm=[0, 2, 1, 3])
        scale = op.Constant(value_float=float(1.0 / np.sqrt(q.shape[2] // heads)))
        bias = op.Where(key_valid, op.Constant(value_float=0.0), op.Constant(value_float=_MASK_FILTER))
        bias = op.Unsqueeze(bias, op.Constant(value_ints=[1, 2]))
        weights = op.Softmax(op.Add(op.Mul(op.MatMul(qh, kt), scale), bias), axis=-1)
        merged = op.Concat(op.Shape(q, start=0, end=2), op.Constant(value_ints=[-1]), axis=0)
        return op.Reshape(op.Transpose(op.MatMul(weights, vh), perm=[0, 2, 1, 3]), merged)

    return {torch.ops.stepaudio.key_masked_attention.default: plain if portable else fused}


def unmask_when_unpadded(graph: onnx.GraphProto) -> int:
    """Wrap every masked MultiHeadAttention node of ``graph`` in If(any key padded, masked, unmasked); returns how many."""
    nodes, wrapped = [], 0
    for node in graph.node:
        if node.domain != DOMAIN or node.op_type != OP or len(node.input) < 5 or not node.input[4]:
            nodes.append(node)
            continue
        out, mask = node.output[0], node.input[4]
        lowest, padded = f"{out}/mask_min", f"{out}/padded"
        nodes.append(helper.make_node("ReduceMin", [mask], [lowest], keepdims=0))
        nodes.append(helper.make_node("Equal", [lowest, f"{out}/zero"], [padded]))
        graph.initializer.append(helper.make_tensor(f"{out}/zero", TensorProto.INT32, [], [0]))
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        branches = {}
        for name, inputs in (("masked", list(node.input[:5])), ("unmasked", list(node.input[:3]))):
            inner = helper.make_node(OP, inputs, [f"{out}/{name}"], domain=DOMAIN, **attributes)
            branches[name] = helper.make_graph(
                [inner], f"{out}/{name}", [], [helper.make_tensor_value_info(f"{out}/{name}", TensorProto.FLOAT, None)]
            )
        nodes.append(
            helper.make_node(
                "If", [padded], [out], then_branch=branches["masked"], else_branch=branches["unmasked"]
            )
        )
        wrapped += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return wrapped
