"""The tiny Step1 tree opens in vLLM as Step1ForCausalLM with an untied head; on CPU, construction stops at the
attention backend (no ALiBi-sqrt there) and nowhere earlier."""

from __future__ import annotations

import traceback

import pytest

from stepaudio.llm.engine_config import STEP1_ATTENTION_BACKEND
from stepaudio.llm.vllm_engine import engine_args
from tests.vllm.helpers import engine_options


def _engine_config(step1_tts_dir, **overrides):
    return engine_args(step1_tts_dir, engine_options(max_model_len=256), max_batch_size=2, **overrides).create_engine_config()


def test_step1_resolves_to_vllms_step1_with_the_untied_head(step1_tts_dir):
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.step1 import Step1ForCausalLM

    config = _engine_config(step1_tts_dir)
    model_config = config.model_config
    assert model_config.architectures == ["Step1ForCausalLM"]
    model_class, _ = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
    assert model_class is Step1ForCausalLM
    assert model_config.hf_config.tie_word_embeddings is False
    assert model_config.hf_config.num_attention_groups == 2  # read through our configuration_step1.py
    assert config.attention_config.backend.name == STEP1_ATTENTION_BACKEND


def test_without_the_override_vllm_would_tie_the_head(step1_tts_dir):
    config = _engine_config(step1_tts_dir, hf_overrides={})
    # vLLM's Step1 ties lm_head when the key is absent (getattr default True), as in the published config.json.
    assert getattr(config.model_config.hf_config, "tie_word_embeddings", True) is True


def test_cpu_construction_stops_exactly_at_the_alibi_sqrt_attention_backend(step1_tts_dir, monkeypatch):
    from vllm.v1.engine.llm_engine import LLMEngine

    # In-process engine core and executor, so the construction error reaches this test (AsyncLLM's would be
    # reported from its engine-core process as "Engine core initialization failed").
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    args = engine_args(step1_tts_dir, engine_options(max_model_len=256), max_batch_size=2, distributed_executor_backend="uni")
    with pytest.raises(ValueError) as caught:
        LLMEngine.from_engine_args(args)
    assert str(caught.value) == "use_alibi_sqrt is not supported by backend CPU_ATTN."
    frames = [(frame.filename.replace("\\", "/"), frame.name) for frame in traceback.extract_tb(caught.value.__traceback__)]
    # It failed while building vLLM's Step1 attention layer, after config, weights format and registry checks.
    assert any(path.endswith("vllm/model_executor/models/step1.py") and name == "__init__" for path, name in frames)
    assert frames[-1][0].endswith("vllm/model_executor/layers/attention/attention.py")

