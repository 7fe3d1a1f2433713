"""TensorRT builder logic that runs without TensorRT: profiles from one spec, engine names, the trtexec command."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from export import tensorrt as trt_export
from stepaudio.decoder import mel_frames_for_tokens
from stepaudio.decoder.token2wav import FLOW_INPUTS, VOCODER_INPUTS

SPEC = trt_export.ShapeSpec(batch=(1, 4, 8), tokens=(1, 100, 1000), prompt_tokens=(0, 40, 200), prompt_frames=(0, 80, 400))


def test_flow_profile_is_consistent_with_the_io_contract():
    shapes = trt_export.profile("flow_decoder", SPEC)
    assert tuple(shapes) == FLOW_INPUTS
    low, opt, high = (dict((k, v[i]) for k, v in shapes.items()) for i in range(3))
    assert low["tokens"] == (1, 1) and high["tokens"] == (8, 1000)
    assert opt["prompt_mel"] == (4, 80, 80)
    assert low["noise"] == (1, 80, 0 + mel_frames_for_tokens(1))
    assert high["noise"] == (8, 80, 400 + mel_frames_for_tokens(1000))
    for name in FLOW_INPUTS:  # every box is ordered min ≤ opt ≤ max
        assert all(a <= b <= c for a, b, c in zip(low[name], opt[name], high[name]))


def test_vocoder_profile_follows_the_flow_output():
    shapes = trt_export.profile("vocoder", SPEC)
    assert tuple(shapes) == VOCODER_INPUTS
    for index, n_tokens in enumerate(SPEC.tokens):
        frames = mel_frames_for_tokens(n_tokens)
        assert shapes["mel"][index] == (SPEC.batch[index], 80, frames)
        assert shapes["source_noise"][index] == (SPEC.batch[index], 9, 256 * frames)


def test_bad_specs_and_names_are_rejected():
    with pytest.raises(ValueError, match="min ≤ opt ≤ max"):
        trt_export.profile("vocoder", trt_export.ShapeSpec(tokens=(10, 5, 20)))
    with pytest.raises(ValueError, match="unknown model"):
        trt_export.profile("llm", SPEC)
    with pytest.raises(ValueError, match="precision"):
        trt_export.engine_filename("vocoder", (9, 0), "10.3.0", "int8")


def test_engine_name_carries_gpu_architecture_and_version():
    assert trt_export.engine_filename("flow_decoder", (9, 0), "10.3.0", "fp16") == "flow_decoder.sm90.trt10.3.0.fp16.plan"
    assert trt_export.parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec") == "10.3.0"
    assert trt_export.parse_trtexec_version("[TensorRT v8601]") == "8.6.1"


def test_trtexec_command_line(tmp_path):
    shapes = trt_export.profile("vocoder", SPEC)
    command = trt_export.trtexec_command(tmp_path / "v.onnx", tmp_path / "v.plan", shapes, "bf16", 4096)
    assert command[0] == "trtexec"
    assert f"--onnx={tmp_path / 'v.onnx'}" in command and "--bf16" in command
    assert "--memPoolSize=workspace:4096M" in command
    assert f"--minShapes=mel:1x80x{mel_frames_for_tokens(1)},mel_lens:1,source_phase:1x9,source_noise:1x9x512" in command
    assert any(c.startswith("--maxShapes=mel:8x80x") for c in command)
    fp32 = trt_export.trtexec_command(tmp_path / "v.onnx", tmp_path / "v.plan", shapes, "fp32")
    assert not any(flag in fp32 for flag in ("--fp16", "--bf16"))


def test_cli_prints_the_command(tmp_path, capsys):
    argv = ["--model", "flow_decoder", "--onnx", str(tmp_path / "f.onnx"), "--out-dir", str(tmp_path), "--print-command"]
    assert trt_export.main(argv + ["--precision", "fp16", "--weakly-typed"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("trtexec --onnx=") and "--fp16" in printed and "noise:1x80x2" in printed
    assert trt_export.main(argv + ["--precision", "bf16"]) == 0  # strongly typed: the graph's types, no flag
    printed = capsys.readouterr().out
    assert "--stronglyTyped" in printed and "--bf16" not in printed and "--fp16" not in printed


def _extremes(max_tokens: int, max_frames: int):
    """Flow requests the served caps accept at their edges: (target ids, prompt ids, prompt frames, noise width)."""
    frames = mel_frames_for_tokens
    yield 1, 0, 0, frames(1)
    yield max_tokens, 0, 0, min(frames(max_tokens), max_frames)
    yield 1, max_tokens - 1, max_frames - frames(1), max_frames
    target = max_tokens // 2
    yield target, max_tokens - target, max_frames - frames(target), max_frames


def test_the_default_profile_holds_every_request_the_served_caps_accept():
    from export.render_repository import DEFAULTS

    spec = trt_export.ShapeSpec.from_render_values()
    batch, max_tokens = int(DEFAULTS["decoder_max_batch_size"]), int(DEFAULTS["decoder_max_tokens"])
    max_frames = int(DEFAULTS["decoder_max_mel_frames"])
    flow = trt_export.profile("flow_decoder", spec)
    vocoder = trt_export.profile("vocoder", spec)
    for rows in (1, batch):
        for tokens, prompt_tokens, prompt_frames, noise in _extremes(max_tokens, max_frames):
            shapes = {"tokens": (rows, tokens), "prompt_tokens": (rows, prompt_tokens),
                      "prompt_mel": (rows, prompt_frames, 80), "noise": (rows, 80, noise)}
            for name, shape in shapes.items():
                low, _, high = flow[name]
                assert all(a <= s <= b for a, s, b in zip(low, shape, high)), (name, shape, low, high)
            mel = min(mel_frames_for_tokens(tokens), max_frames)
            for name, shape in {"mel": (rows, 80, mel), "source_noise": (rows, 9, 256 * mel)}.items():
                low, _, high = vocoder[name]
                assert all(a <= s <= b for a, s, b in zip(low, shape, high)), (name, shape, low, high)
    # and nothing much beyond: the widest frame dims are the cap itself
    assert flow["noise"][2][2] == max_frames and vocoder["mel"][2][2] == max_frames
    assert flow["tokens"][2] == (batch, max_tokens)


def test_graph_precision_reads_the_weights_types(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    def graph(dtype):
        weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
        if dtype == "fp16":
            weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float16), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        elem = onnx.TensorProto.FLOAT16 if dtype == "fp16" else onnx.TensorProto.FLOAT
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, [1, 4])],
                              [helper.make_tensor_value_info("y", elem, [1, 4])], [weight])
        path = tmp_path / f"{dtype}.onnx"
        onnx.save(helper.make_model(g), str(path))
        return path

    assert trt_export.graph_precision(graph("fp16")) == "fp16"
    assert trt_export.graph_precision(graph("fp32")) == "fp32"


def test_tensorrt_plan_option_names_the_plan_per_architecture(tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir()
    for name in ("flow_decoder.sm90.trt10.13.0.fp16.plan", "flow_decoder.sm80.trt10.13.0.fp16.plan",
                 "vocoder.sm90.trt10.13.0.fp32.plan", "notes.txt"):
        (plans / name).write_bytes(b"plan")
    values = {"decoder_gpu_platform": "tensorrt_plan", "tensorrt_plans": str(plans)}
    lines, files = trt_export.attach_plans("flow_decoder", values)
    assert lines.splitlines() == ['cc_model_filenames { key: "8.0" value: "flow_decoder.sm80.trt10.13.0.fp16.plan" }',
                                  'cc_model_filenames { key: "9.0" value: "flow_decoder.sm90.trt10.13.0.fp16.plan" }']
    assert [f.name for f in files] == ["flow_decoder.sm80.trt10.13.0.fp16.plan", "flow_decoder.sm90.trt10.13.0.fp16.plan"]
    assert trt_export.attach_plans("tts", values) == ("", [])
    assert trt_export.attach_plans("flow_decoder", {"decoder_gpu_platform": "onnxruntime_onnx"}) == ("", [])
    (plans / "vocoder.sm80.trt10.14.1.fp32.plan").write_bytes(b"plan")
    with pytest.raises(ValueError, match="one TensorRT version"):
        trt_export.attach_plans("vocoder", values)
    with pytest.raises(ValueError, match="needs tensorrt_plans"):
        trt_export.attach_plans("vocoder", {"decoder_gpu_platform": "tensorrt_plan"})
    with pytest.raises(ValueError, match="decoder_gpu_platform must be one of"):
        trt_export.attach_plans("vocoder", {"decoder_gpu_platform": "tensorrt"})


def test_a_tensorrt_render_fills_the_gpu_config_and_copies_the_plans(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from export.render_repository import base_values, render_model, served_models

    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "flow_decoder.sm90.trt10.13.0.fp16.plan").write_bytes(b"plan")
    (plans / "vocoder.sm90.trt10.13.0.fp16.plan").write_bytes(b"plan")
    from export import render_repository as rr

    values = base_values(Path("/checkpoints"), None, {"decoder_gpu_platform": "tensorrt_plan",
                                                       "tensorrt_plans": str(plans)})
    models = [m for m in served_models(Path("/checkpoints")) if m.name in ("flow_decoder", "vocoder", "tts")]
    files = rr._attach_tensorrt_plans(models, values)
    out = tmp_path / "repo"
    out.mkdir()
    for model in models:
        render_model(model, out, values)
    flow = text_format.Parse((out / "flow_decoder" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert flow.platform == "tensorrt_plan" and dict(flow.cc_model_filenames) == {
        "9.0": "flow_decoder.sm90.trt10.13.0.fp16.plan"}
    cpu = (out / "flow_decoder" / "configs" / "cpu.pbtxt").read_text()
    assert "tensorrt" not in cpu and "cc_model_filenames" not in cpu
    # Native backends take ragged inputs only as 1-D concatenations (docs/gpu.md): the padded graphs must not get it.
    assert not any(tensor.allow_ragged_batch for tensor in flow.input)
    assert [f.name for f in files["vocoder"]] == ["vocoder.sm90.trt10.13.0.fp16.plan"] and files["tts"] == []


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_python_api_build_says_tensorrt_is_missing(tmp_path):
    with pytest.raises(ValueError, match="tensorrt package is not installed"):
        trt_export.build_engine(tmp_path / "f.onnx", tmp_path / "f.plan", trt_export.profile("vocoder", SPEC), "fp16")
