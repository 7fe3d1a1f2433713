"""Helpers every served python model uses, so each ``model.py`` stays a thin adapter."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import triton_python_backend_utils as pb_utils


def parse_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def parameter(config: dict, key: str, default: Any = None, cast: Callable[[str], Any] = str) -> Any:
    """A ``parameters { key: ... }`` value; unset, empty or an unfilled ``${...}`` placeholder gives ``default``."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None or value == "" or value.startswith("${"):
        return default
    if cast is bool:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return cast(value)


def optional_input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def required_input(request, name: str) -> np.ndarray:
    value = optional_input(request, name)
    if value is None:
        raise ValueError(f"input {name} is required")
    return value


def _one_element(value: np.ndarray, name: str) -> Any:
    if value.size != 1:
        raise ValueError(f"input {name} must hold one value, got shape {list(value.shape)}")
    return value.reshape(-1)[0]


def optional_string(request, name: str) -> str | None:
    value = optional_input(request, name)
    if value is None:
        return None
    item = _one_element(value, name)
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"input {name} is not valid UTF-8") from exc
    return str(item)


def optional_scalar(request, name: str, cast: Callable[[Any], Any]) -> Any:
    value = optional_input(request, name)
    if value is None:
        return None
    item = _one_element(value, name)
    if isinstance(item, bytes):
        raise ValueError(f"input {name} must be numeric")
    return cast(item)


def tensor(name: str, array: np.ndarray):
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


def string_tensor(name: str, text: str):
    return pb_utils.Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


def error_response(exc: BaseException):
    """ValueError (the library's bad-input signal) → INVALID_ARG with its message; anything else → INTERNAL."""
    if isinstance(exc, ValueError):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
    )


def respond_each(requests, handle: Callable[[Any], list], pool=None) -> list:
    """Non-decoupled execute: one response per request; a failing request never fails its batch neighbours.
    With a thread ``pool`` the requests of one batch run concurrently (BLS calls and ONNX Runtime release the GIL)."""
    if pool is None:
        outcomes = []
        for request in requests:
            try:
                outcomes.append(handle(request))
            except Exception as exc:  # noqa: BLE001 - every failure becomes that request's error response
                outcomes.append(exc)
    else:
        futures = [pool.submit(handle, request) for request in requests]
        outcomes = [future.exception() or future.result() for future in futures]
    return [
        error_response(o) if isinstance(o, BaseException) else pb_utils.InferenceResponse(output_tensors=o)
        for o in outcomes
    ]


def device_for(args: dict, config: dict) -> str:
    """``cuda:N`` for a KIND_GPU instance, else ``cpu`` (then torch gets ``cpu_threads`` threads, default 1, so the
    python instances of a CPU server do not oversubscribe the cores)."""
    if args["model_instance_kind"] == "GPU":
        return f"cuda:{args['model_instance_device_id']}"
    import torch

    torch.set_num_threads(parameter(config, "cpu_threads", 1, int))
    return "cpu"


def repository_path(args: dict, relative: str) -> str:
    """A path given relative to this model's folder (``../tokenizer/1/x.onnx``), so a rendered repository can move."""
    import os

    return os.path.normpath(os.path.join(args["model_repository"], relative))
