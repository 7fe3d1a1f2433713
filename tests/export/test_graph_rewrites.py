"""The decoder graphs' speed rewrites compute what the plain graphs compute: fused attention (with its padding If)
against softmax attention, height-1 2-D convolutions against 1-D ones, the Snake's square against pow(2)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import attention
from export.vocoder_onnx import conv1d_as_conv2d
from stepaudio.decoder.estimator import key_masked_attention
from stepaudio.decoder.hift import Snake

HEADS, HEAD_DIM = 4, 16


def _reference_attention(q, k, v, key_valid, heads):
    """Plain softmax attention in float64 with padded keys left out."""
    batch, length, _ = q.shape
    split = [t.double().view(batch, length, heads, -1).transpose(1, 2) for t in (q, k, v)]
    scores = split[0] @ split[1].transpose(-1, -2) / math.sqrt(split[0].shape[-1])
    scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return (torch.softmax(scores, -1) @ split[2]).transpose(1, 2).reshape(batch, length, -1)


def _qkv(seed, batch=3, length=37):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, HEADS * HEAD_DIM, generator=g) * 2 for _ in range(3)]


def _key_valid(lengths, width):
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("lengths", [[37, 37, 37], [37, 20, 1]])
def test_library_attention_matches_softmax_attention(lengths):
    q, k, v = _qkv(1)
    key_valid = _key_valid(lengths, 37)
    out = key_masked_attention(q, k, v, key_valid, HEADS)
    torch.testing.assert_close(out.double(), _reference_attention(q, k, v, key_valid, HEADS), rtol=0, atol=1e-5)


class _Attend(torch.nn.Module):
    def forward(self, q, k, v, lengths):
        return key_masked_attention(q, k, v, torch.arange(q.shape[1])[None, :] < lengths[:, None], HEADS)


def _export_attention(portable: bool) -> onnx.ModelProto:
    q, k, v = _qkv(2)
    batch, length = torch.export.Dim("batch", min=1, max=16), torch.export.Dim("length", min=2, max=512)
    program = torch.onnx.export(
        _Attend(),
        (q, k, v, torch.tensor([37, 20, 5])),
        dynamo=True,
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}, {0: batch, 1: length}, {0: batch}),
        input_names=["q", "k", "v", "lengths"],
        custom_translation_table=attention.translation_table(portable),
        optimize=False,
        verbose=False,
    )
    model = program.model_proto
    if not portable:
        assert attention.unmask_when_unpadded(model.graph) == 1
    return model


@pytest.mark.parametrize("portable", [False, True])
def test_exported_attention_matches_softmax_attention_with_and_without_padding(portable):
    model = _export_attention(portable)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    if portable:
        assert all(domain in ("", "ai.onnx") for domain, _ in ops) and ("", "Softmax") in ops
    else:
        assert ("", "If") in ops and ("", "Softmax") not in ops
        (branch,) = [n for n in model.graph.node if n.op_type == "If"]
        branches = {a.name: helper.get_attribute_value(a) for a in branch.attribute}
        # then (some key padded): the masked node; else: the unmasked one
        assert [len(n.input) for b in ("then_branch", "else_branch") for n in branches[b].node] == [5, 3]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for lengths, width in (([37, 20, 1], 37), ([29, 29], 29), ([8], 8)):
        q, k, v = (t[: len(lengths), :width] for t in _qkv(3))
        feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "lengths": np.array(lengths, np.int64)}
        (out,) = session.run(None, feeds)
        expected = _reference_attention(q, k, v, _key_valid(lengths, width), HEADS).numpy()
        # A padded key taken into account would move the short rows' outputs far more than this.
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def _conv_model(kind: str, channels: int, kernel: int, **attributes) -> onnx.ModelProto:
    rng = np.random.default_rng(kernel)
    group = attributes.get("group", 1)
    shape = (channels, channels // group, kernel)
    initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "w"),
                    numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")]
    node = helper.make_node(kind, ["x", "w", "b"], ["y"], kernel_shape=[kernel], **attributes)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, "length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, "out_length"])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    "attributes",
    [
        {"dilations": [5], "pads": [25, 25]},  # ResBlock: kernel 11, dilation 5
        {"strides": [4], "pads": [2, 2]},  # source_downs
        {"pads": [3, 1], "group": 4},  # uneven pads, grouped
    ],
)
def test_conv1d_as_conv2d_gives_the_1d_convolution(attributes):
    model = _conv_model("Conv", 32, 11, **attributes)
    x = np.random.default_rng(0).standard_normal((2, 32, 300)).astype(np.float32)
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert conv1d_as_conv2d(model.graph) == 1
    (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(helper.get_attribute_value(next(a for a in conv.attribute if a.name == "kernel_shape"))) == 2
    onnx.checker.check_model(model)
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_conv1d_as_conv2d_leaves_other_ops():
    model = _conv_model("ConvTranspose", 8, 4, strides=[2])
    assert conv1d_as_conv2d(model.graph) == 0
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]


def test_snake_square_is_pow_two_bit_for_bit():
    snake = Snake(24)
    with torch.no_grad():
        snake.alpha.copy_(torch.rand(24) * 3 + 0.05)
    x = torch.randn(2, 24, 500) * 4
    alpha = snake.alpha.view(1, -1, 1)
    with torch.no_grad():
        expected = x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)
        assert torch.equal(snake(x), expected)
