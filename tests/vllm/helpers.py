"""Engine settings the vLLM tests and their fixtures share."""

from stepaudio.llm.engine_config import LLMEngineOptions
from stepaudio.testing.hf_compat import TINY_LLAMA

MAX_MODEL_LEN = TINY_LLAMA.max_seq_len
MAX_BATCH = 2  # two running requests: a third one waits for a free slot


def engine_options(**changes) -> LLMEngineOptions:
    return LLMEngineOptions(engine="vllm", max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=0.1).replace(**changes)
