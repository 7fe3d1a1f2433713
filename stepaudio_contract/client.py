"""Request tensors as every caller of the served models builds them: the gateway, the CLIs, the bench scripts and the
adapters' BLS calls. ``{name: np.ndarray}`` here; ``infer_inputs`` turns such a dict into tritonclient inputs.

tritonclient is imported inside the functions that need it (a user of the tensor helpers needs numpy only).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from stepaudio_contract.specs import SAMPLING, SESSION_OPTIONS, Tensor


def string(value: str, batched: bool = False) -> np.ndarray:
    """A TYPE_STRING tensor of one UTF-8 element: shape [1], or [1, 1] with the batch dimension."""
    array = np.array([value.encode("utf-8")], dtype=np.object_)
    return array[None] if batched else array


def scalar(value: Any, dtype: str | np.dtype, batched: bool = False) -> np.ndarray:
    array = np.array([value], dtype=dtype)
    return array[None] if batched else array


def _value(source: Mapping[str, Any] | object, key: str) -> Any:
    return source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)


def given(tensors: Iterable[Tensor], source: Mapping[str, Any] | object, batched: bool = False) -> dict[str, np.ndarray]:
    """The optional one-element inputs among ``tensors`` that ``source`` gives: each read from the key or attribute
    of its name lower-cased (SEED ← seed), left out when None, in the dtype its spec declares."""
    result = {}
    for tensor in tensors:
        value = _value(source, tensor.name.lower())
        if value is not None:
            result[tensor.name] = string(value, batched) if tensor.data_type == "TYPE_STRING" else scalar(
                value, tensor.numpy_dtype, batched)
    return result


def sampling(source: Mapping[str, Any] | object, batched: bool = False) -> dict[str, np.ndarray]:
    """The LLM sampling inputs (``specs.SAMPLING``) that ``source`` gives (``temperature``, ``seed``, ...)."""
    return given(SAMPLING, source, batched)


def session_start(source: Mapping[str, Any] | object, sample_rate: int, speaker: str | None) -> dict[str, np.ndarray]:
    """The first request of a ``realtime_session`` sequence, less its AUDIO: the rate, the session options
    (``specs.SESSION_OPTIONS``) that ``source`` gives, the preset voice. Batched (the model batches 1)."""
    tensors = {"SAMPLE_RATE": scalar(sample_rate, np.int32, batched=True)} | given(SESSION_OPTIONS, source, batched=True)
    if speaker is not None:
        tensors["SPEAKER"] = string(speaker, batched=True)
    return tensors


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
    return module


def infer_inputs(tensors: Mapping[str, np.ndarray], protocol: str = "grpc") -> list:
    """tritonclient ``InferInput`` objects (gRPC or HTTP) holding ``tensors``, shape and Triton dtype from each array."""
    from tritonclient.utils import np_to_triton_dtype

    module = _module(protocol)
    inputs = []
    for name, value in tensors.items():
        tensor = module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def requested_outputs(names: Iterable[str], protocol: str = "grpc") -> list:
    module = _module(protocol)
    return [module.InferRequestedOutput(name) for name in names]
