"""Strict loading of a Step1 checkpoint folder (``config.json`` + one or many ``*.safetensors``).

The module is built on the ``meta`` device (no storage), then every tensor is read from its shard straight onto
the target device, cast to the target dtype and put in place — the weights exist once, never as a second
randomly initialised copy. Any unexpected, duplicated or missing key, or a wrong shape, is a ``ValueError``
naming the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from stepaudio.checkpoints.layout import LLM_CONFIG, LLM_WEIGHTS_INDEX
from stepaudio.llm.config import Step1Config, resolve_dtype
from stepaudio.llm.model import Step1ForCausalLM


def load_step1(
    path: Path | str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Step1ForCausalLM:
    """Load ``path`` (a Step-Audio-TTS-3B or Step-Audio-Chat folder) in ``dtype`` (default: the config's
    ``torch_dtype``) on ``device``; the model is in eval mode without gradients."""
    path = Path(path)
    config = Step1Config.from_json_file(path / LLM_CONFIG)
    dtype = resolve_dtype(config.torch_dtype if dtype is None else dtype)
    device = torch.device(device)
    with torch.device("meta"):
        model = Step1ForCausalLM(config)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    shards, weight_map = shard_files(path)
    loaded: set[str] = set()
    for shard in shards:
        # safetensors wants "cuda:0" spelled out; "cpu" stays "cpu".
        target = str(device) if device.type == "cpu" or device.index is not None else f"{device.type}:0"
        with safe_open(str(shard), framework="pt", device=target) as reader:
            for key in reader.keys():
                if key not in expected:
                    raise ValueError(f"unexpected key {key!r} in {shard.name}")
                if key in loaded:
                    raise ValueError(f"key {key!r} is stored twice (again in {shard.name})")
                if weight_map is not None and weight_map.get(key) != shard.name:
                    raise ValueError(f"key {key!r} is in {shard.name} but the index maps it to {weight_map.get(key)!r}")
                shape = tuple(reader.get_slice(key).get_shape())
                if shape != expected[key]:
                    raise ValueError(f"key {key!r} in {shard.name} has shape {list(shape)}, expected {list(expected[key])}")
                tensor = reader.get_tensor(key)
                if not tensor.is_floating_point():
                    raise ValueError(f"key {key!r} in {shard.name} has non-float dtype {tensor.dtype}")
                _put(model, key, tensor.to(dtype))
                loaded.add(key)
    missing = sorted(set(expected) - loaded)
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"checkpoint {path} is missing {len(missing)} key(s): {shown}")
    return model.eval()


def shard_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    """Shards named by ``model.safetensors.index.json`` (every one must exist) and its key → file map, else all
    ``*.safetensors`` and ``None``."""
    index_path = path / LLM_WEIGHTS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index_path} has no readable weight_map: {exc}") from None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path} weight_map is not an object")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ValueError(f"{index_path.name} names shard(s) that do not exist: {missing}")
        return [path / n for n in names], weight_map
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"no *.safetensors weights in {path}")
    return shards, None


def _put(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    module_name, _, param_name = key.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, param_name, nn.Parameter(tensor, requires_grad=False))
