"""Random Step1 weights under the published key names, for the test checkpoint writers (``llm.py``: the Step1
folders, ``hf_compat.py``: the Llama-architecture twin). Its own module so neither writer imports the other."""

from __future__ import annotations

import torch

from stepaudio.llm.config import Step1Config
from stepaudio.llm.model import Step1ForCausalLM


def random_state_dict(config: Step1Config, seed: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random weights under the published key names; scaled so activations stay O(1) through the layers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in Step1ForCausalLM(config).named_parameters()}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            # Not all ones, so a norm weight that fails to load changes the output.
            tensor = 1 + 0.1 * torch.randn(shape, generator=generator)
        elif name == "model.embed_tokens.weight":
            tensor = torch.randn(shape, generator=generator)
        else:
            tensor = torch.randn(shape, generator=generator) / shape[1] ** 0.5
        state[name] = tensor.to(dtype).contiguous()
    return state
