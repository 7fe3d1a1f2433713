"""Which generation engine a served LLM model runs, and with what settings — parsed from its config parameters.

A rendered ``config.pbtxt`` says, per model::

    parameters { key: "engine" value: { string_value: "vllm" } }            # native (default) | vllm
    parameters { key: "tensor_parallel_size" value: { string_value: "8" } }
    parameters { key: "pipeline_parallel_size" value: { string_value: "1" } }
    parameters { key: "max_model_len" value: { string_value: "8192" } }
    parameters { key: "gpu_memory_utilization" value: { string_value: "0.90" } }
    parameters { key: "attention_backend" value: { string_value: "auto" } }  # auto: TRITON_ATTN for Step1
    parameters { key: "distributed_executor_backend" value: { string_value: "mp" } }  # mp | ray (multi-node)
    parameters { key: "enforce_eager" value: { string_value: "false" } }

``stepaudio.llm.engine_factory.build_engine`` turns the options into a ``GenerationEngine``. This module imports
neither engine (``vllm_engine`` imports it: the factory lives in its own module so the two never import each other).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

ENGINES = ("native", "vllm")
EXECUTOR_BACKENDS = ("mp", "ray")
# vLLM's only attention backend with ALiBi-sqrt (docs/reference-notes.md#step1-on-vllm); "auto" picks it for Step1 checkpoints.
STEP1_ATTENTION_BACKEND = "TRITON_ATTN"


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


@dataclass
class LLMEngineOptions:
    engine: str = "native"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None  # None: the checkpoint's max_seq_len
    gpu_memory_utilization: float = 0.9  # vLLM: fraction of each GPU for weights + activations + KV cache
    attention_backend: str = "auto"
    distributed_executor_backend: str | None = None  # None: vLLM decides (mp in one node)
    enforce_eager: bool = False  # True skips CUDA graph capture (faster start, slower decode)
    kv_cache_dtype: str = "auto"

    # Parameter name → how to read its string; fields not listed are not configurable from a config.pbtxt.
    _PARSERS = {
        "engine": str,
        "tensor_parallel_size": int,
        "pipeline_parallel_size": int,
        "max_model_len": int,
        "gpu_memory_utilization": float,
        "attention_backend": str,
        "distributed_executor_backend": str,
        "enforce_eager": _parse_bool,
        "kv_cache_dtype": str,
    }

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_model_len is not None and (
            isinstance(self.max_model_len, bool) or not isinstance(self.max_model_len, int) or self.max_model_len < 2
        ):
            raise ValueError(f"max_model_len must be None or an integer >= 2, got {self.max_model_len!r}")
        utilization = self.gpu_memory_utilization
        if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not (
            math.isfinite(utilization) and 0 < utilization <= 1
        ):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization!r}")
        if not isinstance(self.attention_backend, str) or not self.attention_backend:
            raise ValueError(f"attention_backend must be a backend name or 'auto', got {self.attention_backend!r}")
        if self.distributed_executor_backend not in (None, *EXECUTOR_BACKENDS):
            raise ValueError(
                f"distributed_executor_backend must be one of {EXECUTOR_BACKENDS} or unset, "
                f"got {self.distributed_executor_backend!r}"
            )
        if self.engine == "native" and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise ValueError("the native engine runs on one device; tensor/pipeline parallelism needs engine 'vllm'")

    @property
    def world_size(self) -> int:
        """Devices one engine spans (one Triton instance of the model owns all of them)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> LLMEngineOptions:
        """Options from a model's config parameters: ``{key: "text"}`` or Triton's ``{key: {"string_value": ...}}``.
        Unknown keys are other settings of the model; an empty value or an unfilled ``${...}`` placeholder means
        the default. Bad values raise ``ValueError`` naming the key."""
        values: dict[str, Any] = {}
        for key, parse in cls._PARSERS.items():
            raw = parameters.get(key)
            if isinstance(raw, Mapping):
                raw = raw.get("string_value")
            if raw is None:
                continue
            text = str(raw).strip()
            if not text or text.startswith("${"):
                continue
            try:
                values[key] = parse(text)
            except ValueError as exc:
                raise ValueError(f"parameter {key!r}: cannot read {text!r} ({exc})") from None
        options = cls(**values)
        options.validate()
        return options

    def replace(self, **changes) -> LLMEngineOptions:
        options = dataclasses.replace(self, **changes)
        options.validate()
        return options
