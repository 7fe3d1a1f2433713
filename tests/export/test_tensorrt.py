"""TensorRT builder logic that runs without TensorRT: profiles from one spec, engine names, the trtexec command."""

from __future__ import annotations

import importlib.util

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
    assert trt_export.main(argv + ["--precision", "fp16"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("trtexec --onnx=") and "--fp16" in printed and "noise:1x80x2" in printed


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_python_api_build_says_tensorrt_is_missing(tmp_path):
    with pytest.raises(ValueError, match="tensorrt package is not installed"):
        trt_export.build_engine(tmp_path / "f.onnx", tmp_path / "f.plan", trt_export.profile("vocoder", SPEC), "fp16")
