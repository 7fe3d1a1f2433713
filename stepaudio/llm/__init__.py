"""Step1 LLMs (Step-Audio-TTS-3B, Step-Audio-Chat): checkpoint-compatible model, tokenizer, sampling and the
continuous-batching generation engine (or vLLM, chosen by ``LLMEngineOptions``). The tiny checkpoint writer lives in
``stepaudio.testing.llm``."""

from stepaudio.llm.config import Step1Config, resolve_dtype
from stepaudio.llm.engine import (
    GenerationEngine,
    GenerationRequest,
    TokenStream,
    TorchStep1Engine,
)
from stepaudio.llm.engine_config import LLMEngineOptions
from stepaudio.llm.engine_factory import build_engine
from stepaudio.llm.model import KVCache, Step1ForCausalLM, alibi_slopes, alibi_sqrt_bias
from stepaudio.llm.sampling import SamplingParams
from stepaudio.llm.tokenizer import Step1Tokenizer
from stepaudio.llm.weights import load_step1

__all__ = [
    "GenerationEngine",
    "GenerationRequest",
    "KVCache",
    "LLMEngineOptions",
    "SamplingParams",
    "Step1Config",
    "Step1ForCausalLM",
    "Step1Tokenizer",
    "TokenStream",
    "TorchStep1Engine",
    "alibi_slopes",
    "alibi_sqrt_bias",
    "build_engine",
    "load_step1",
    "resolve_dtype",
]
