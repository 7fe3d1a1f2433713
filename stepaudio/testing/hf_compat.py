"""What transformers and vLLM need to open the checkpoints the project writes.

- ``CONFIGURATION_STEP1``: the text of a minimal ``configuration_step1.py`` (our own code). The published Step1
  folders ship such a module and reach it through ``auto_map`` in ``config.json``; transformers and vLLM import it
  with ``trust_remote_code=True``. The tiny writer puts this file next to every tiny config so the tiny trees open
  the same way as the published ones.
- ``write_tiny_llama``: a Llama-architecture folder (config.json + safetensors) with the Step1 weight names. The
  layer names of Step1 and Llama are the same; only the position encoding differs (ALiBi-sqrt vs RoPE). vLLM's CPU
  attention has no ALiBi-sqrt, so the vLLM engine adapter is tested on CPU with this Llama twin (head_dim 64: the
  CPU attention rejects 16).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from stepaudio.checkpoints.layout import LLM_CONFIG, LLM_CONFIG_MODULE
from stepaudio.llm.config import Step1Config
from stepaudio.testing.random_weights import random_state_dict

LLAMA_WEIGHTS = "model.safetensors"  # the one-shard name transformers and vLLM look for without an index
# The twin the vLLM-CPU tests and bench run: real vocabulary and special ids, head_dim 64 (2 heads of 64, 1 group).
TINY_LLAMA = Step1Config(
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=2,
    num_attention_groups=1,
    num_hidden_layers=2,
    vocab_size=74752,
    max_seq_len=2048,
    torch_dtype="float32",
)

# Written as a file next to config.json; transformers imports it by path, so it must not import this package.
CONFIGURATION_STEP1 = '''\
"""Step1 configuration for transformers' ``trust_remote_code`` loading (written by stepaudio-triton)."""

from transformers import PretrainedConfig


class Step1Config(PretrainedConfig):
    model_type = "step1"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        hidden_size=3072,
        intermediate_size=8192,
        num_attention_heads=48,
        num_attention_groups=4,
        num_hidden_layers=32,
        max_seq_len=32768,
        vocab_size=74752,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=3,
        pad_token_id=0,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_attention_groups = num_attention_groups
        self.num_hidden_layers = num_hidden_layers
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
'''


def write_configuration_module(folder: Path | str) -> Path:
    path = Path(folder) / LLM_CONFIG_MODULE
    path.write_text(CONFIGURATION_STEP1, encoding="utf-8")
    return path


def llama_config_dict(config: Step1Config) -> dict:
    """config.json of the Llama twin of ``config`` (same widths, heads, groups, vocabulary and special ids)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_attention_groups,
        "head_dim": config.head_dim,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,  # Step1 has a separate lm_head; say so rather than rely on a default
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": config.torch_dtype,
    }


def write_tiny_llama(folder: Path | str, config: Step1Config, seed: int) -> Path:
    """A Llama-architecture folder with random Step1-named weights of ``config``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(random_state_dict(config, seed), str(folder / LLAMA_WEIGHTS), metadata={"format": "pt"})
    text = json.dumps(llama_config_dict(config), indent=2) + "\n"
    (folder / LLM_CONFIG).write_text(text, encoding="utf-8")
    return folder
