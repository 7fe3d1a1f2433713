"""Engine selection per served model: parsing, validation and the native path of ``build_engine``."""

from __future__ import annotations

import pytest

from stepaudio.llm.engine import GenerationRequest, TorchStep1Engine
from stepaudio.llm.engine_config import LLMEngineOptions
from stepaudio.llm.engine_factory import build_engine, vllm_visible_devices
from stepaudio.llm.sampling import SamplingParams


def test_triton_parameters_become_options():
    parameters = {
        "engine": {"string_value": "vllm"},
        "tensor_parallel_size": {"string_value": "8"},
        "pipeline_parallel_size": {"string_value": "2"},
        "max_model_len": {"string_value": "8192"},
        "gpu_memory_utilization": {"string_value": "0.85"},
        "attention_backend": {"string_value": "TRITON_ATTN"},
        "distributed_executor_backend": {"string_value": "ray"},
        "enforce_eager": {"string_value": "yes"},
        "checkpoint": {"string_value": "/models/x"},  # another setting of the model: ignored here
    }
    options = LLMEngineOptions.from_parameters(parameters)
    assert options == LLMEngineOptions(
        engine="vllm",
        tensor_parallel_size=8,
        pipeline_parallel_size=2,
        max_model_len=8192,
        gpu_memory_utilization=0.85,
        attention_backend="TRITON_ATTN",
        distributed_executor_backend="ray",
        enforce_eager=True,
    )
    assert options.world_size == 16


def test_unset_empty_and_placeholder_values_keep_the_defaults():
    options = LLMEngineOptions.from_parameters({"engine": "", "max_model_len": "${llm_max_model_len}"})
    assert options == LLMEngineOptions()
    assert options.engine == "native" and options.max_model_len is None


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"engine": "tensorrt"}, "engine must be one of"),
        ({"engine": "vllm", "tensor_parallel_size": "0"}, "tensor_parallel_size"),
        ({"engine": "vllm", "tensor_parallel_size": "two"}, "parameter 'tensor_parallel_size'"),
        ({"engine": "vllm", "gpu_memory_utilization": "1.5"}, "gpu_memory_utilization"),
        ({"engine": "vllm", "gpu_memory_utilization": "nan"}, "gpu_memory_utilization"),
        ({"max_model_len": "1"}, "max_model_len"),
        ({"enforce_eager": "maybe"}, "parameter 'enforce_eager'"),
        ({"engine": "vllm", "distributed_executor_backend": "slurm"}, "distributed_executor_backend"),
        ({"tensor_parallel_size": "4"}, "native engine runs on one device"),
    ],
)
def test_bad_values_raise_value_error(parameters, message):
    with pytest.raises(ValueError, match=message):
        LLMEngineOptions.from_parameters(parameters)


def test_native_engine_is_built_with_the_model_length(tts_dir):
    options = LLMEngineOptions.from_parameters({"engine": "native", "max_model_len": "64"})
    with build_engine(str(tts_dir), options, device="cpu", dtype="float32", max_batch_size=2) as engine:
        assert isinstance(engine, TorchStep1Engine)
        assert engine.max_seq_len == 64
        assert len(engine.generate([GenerationRequest([5, 6, 7], SamplingParams(temperature=0, max_new_tokens=3))])[0]) == 3



def test_one_gpu_vllm_instances_see_only_their_gpu():
    assert vllm_visible_devices("cuda:3", None) == "3"
    assert vllm_visible_devices("cuda:1", "4,5,6") == "5"  # Triton's N indexes the GPUs already visible
    assert vllm_visible_devices("cpu", "0,1") is None
    with pytest.raises(ValueError, match="not among"):
        vllm_visible_devices("cuda:2", "0,1")


def test_parallel_vllm_on_a_kind_gpu_instance_is_refused(tts_dir):
    # Eight KIND_GPU instances each starting a TP-8 engine would load the model eight times over the same GPUs.
    options = LLMEngineOptions(engine="vllm", tensor_parallel_size=8)
    with pytest.raises(ValueError, match="KIND_MODEL"):
        build_engine(str(tts_dir), options, device="cuda:0")
