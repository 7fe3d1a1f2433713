"""Step1 ``config.json``: the keys of the published TTS-3B and Chat checkpoints (docs/checkpoints.md#step1-llm-folders)."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import torch

MODEL_TYPE = "step1"
ARCHITECTURE = "Step1ForCausalLM"
# The published folders ship their own modeling code; the keys are kept so the written config is the real one.
AUTO_MAP = {
    "AutoConfig": "configuration_step1.Step1Config",
    "AutoModelForCausalLM": "modeling_step1.Step1ForCausalLM",
}

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.bfloat16`` / ``"bf16"`` / ``"bfloat16"`` (and the fp16 / fp32 spellings) → ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"unsupported dtype {dtype!r}; expected bfloat16, float16 or float32")


@dataclass(frozen=True)
class Step1Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_attention_groups: int
    num_hidden_layers: int
    vocab_size: int
    max_seq_len: int
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 1
    eos_token_id: int = 3
    pad_token_id: int = 0
    torch_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_attention_groups",
            "num_hidden_layers",
            "vocab_size",
            "max_seq_len",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_attention_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_attention_groups {self.num_attention_groups}"
            )
        if not (isinstance(self.rms_norm_eps, (int, float)) and math.isfinite(self.rms_norm_eps)):
            raise ValueError(f"rms_norm_eps must be a finite number, got {self.rms_norm_eps!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"config {name} must be a token id below vocab_size, got {value!r}")
        resolve_dtype(self.torch_dtype)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_attention_groups

    @classmethod
    def from_dict(cls, data: dict) -> Step1Config:
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names if n not in data and cls.__dataclass_fields__[n].default is MISSING]
        if missing:
            raise ValueError(f"config is missing key(s) {missing}")
        # Unknown keys (transformers_version, auto_map, ...) are metadata for other loaders.
        return cls(**{n: data[n] for n in names if n in data})

    @classmethod
    def from_json_file(cls, path: Path | str) -> Step1Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"no Step1 config at {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The ``config.json`` content in the published form."""
        return {"architectures": [ARCHITECTURE], "auto_map": dict(AUTO_MAP), "model_type": MODEL_TYPE, **asdict(self)}

