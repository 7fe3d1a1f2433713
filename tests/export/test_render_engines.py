"""Rendering picks each LLM model's engine: the defaults keep the native engine, and chat_llm can be rendered as one
vLLM instance spanning 8 GPUs (tensor parallel) — the configuration the 130B model needs."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.render_repository import render
from stepaudio.llm.engine_config import LLMEngineOptions


def _config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _options(config: model_config_pb2.ModelConfig) -> LLMEngineOptions:
    return LLMEngineOptions.from_parameters({key: value.string_value for key, value in config.parameters.items()})


def test_default_render_keeps_the_native_engine_one_instance_per_gpu(tmp_path):
    render(tmp_path, tmp_path / "repo", None, {}, only=["tts_llm", "chat_llm"])
    for model in ("tts_llm", "chat_llm"):
        for name in ("config.pbtxt", "configs/cpu.pbtxt"):
            assert _options(_config(tmp_path / "repo" / model / name)) == LLMEngineOptions()
    gpu = _config(tmp_path / "repo" / "chat_llm" / "config.pbtxt")
    assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_chat_llm_renders_as_one_tensor_parallel_vllm_instance(tmp_path):
    values = {
        "chat_llm_engine": "vllm",
        "chat_llm_tensor_parallel_size": "8",
        "chat_llm_instance_kind": "KIND_MODEL",
        "llm_max_model_len": "8192",
        "llm_gpu_memory_utilization": "0.92",
    }
    render(tmp_path, tmp_path / "repo", None, values, only=["tts_llm", "chat_llm"])
    chat = _config(tmp_path / "repo" / "chat_llm" / "config.pbtxt")
    assert [(g.kind, g.count) for g in chat.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_MODEL, 1)]
    options = _options(chat)
    assert (options.engine, options.tensor_parallel_size, options.world_size) == ("vllm", 8, 8)
    assert (options.max_model_len, options.gpu_memory_utilization) == (8192, 0.92)
    assert _options(_config(tmp_path / "repo" / "tts_llm" / "config.pbtxt")).engine == "native"  # chosen per model


def test_distributed_executor_backend_render_value_reaches_the_engine_options(tmp_path):
    """The render value chat_llm_distributed_executor_backend → chat_llm's parameter → LLMEngineOptions (which
    vllm_engine.engine_args passes to vLLM as is); empty leaves the choice to vLLM, a bad value fails the load."""
    default = tmp_path / "default"
    render(tmp_path, default, None, {}, only=["chat_llm"])
    assert _options(_config(default / "chat_llm" / "config.pbtxt")).distributed_executor_backend is None
    for backend in ("mp", "ray"):
        out = tmp_path / backend
        render(tmp_path, out, None, {"chat_llm_engine": "vllm", "chat_llm_distributed_executor_backend": backend},
               only=["chat_llm"])
        assert _options(_config(out / "chat_llm" / "config.pbtxt")).distributed_executor_backend == backend
    bad = tmp_path / "bad"
    render(tmp_path, bad, None, {"chat_llm_distributed_executor_backend": "slurm"}, only=["chat_llm"])
    with pytest.raises(ValueError, match="distributed_executor_backend"):
        _options(_config(bad / "chat_llm" / "config.pbtxt"))
