"""Helpers every served python model uses, so each ``model.py`` stays a thin adapter."""

from __future__ import annotations

import contextvars
import json
import traceback
from typing import Any, Callable

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio_contract import client, compat, errors
from stepaudio_triton.memory import idle_trim

# What the server this stub runs in needs (compat.py); set from the model's config by ``parse_config``. One stub
# serves one model instance, so its config's ``triton_version`` holds for the whole process.
triton = compat.TritonFeatures.for_version(compat.DEFAULT_VERSION)


def parse_config(args: dict) -> dict:
    """The model's config; also reads the Triton version the repository was rendered for into ``triton``."""
    global triton
    config = json.loads(args["model_config"])
    triton = compat.TritonFeatures.for_version(parameter(config, compat.VERSION_PARAMETER, compat.DEFAULT_VERSION))
    return config


def parameter(config: dict, key: str, default: Any = None, cast: Callable[[str], Any] = str) -> Any:
    """A ``parameters { key: ... }`` value; unset, empty or an unfilled ``${...}`` placeholder gives ``default``."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None or value == "" or value.startswith("${"):
        return default
    if cast is bool:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return cast(value)


def rendered_parameter(config: dict, key: str, cast: Callable[[str], Any] = str) -> Any:
    """A parameter the model's template always sets from a deployment value, whose default lives in one place only
    (``DEFAULTS`` of export/render_repository.py, or the template). Unset means an unrendered config: no load."""
    value = parameter(config, key, None, cast)
    if value is None:
        raise ValueError(f"parameter {key!r} is not set; serve a repository rendered by python -m export.render_repository")
    return value


def owned(tensor) -> np.ndarray:
    """A tensor's values as an array that owns its memory. ``as_numpy()`` is a view into the stub's shared-memory
    region, whose allocator hands a released response's memory out again: a view kept past its tensor reads
    someone else's data (docs/hardening.md, the stub crash)."""
    return np.array(tensor.as_numpy(), copy=True)


def optional_input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else owned(tensor)


def required_input(request, name: str) -> np.ndarray:
    value = optional_input(request, name)
    if value is None:
        raise ValueError(f"input {name} is required")
    return value


def given_inputs(request, names) -> dict[str, np.ndarray]:
    """The inputs among ``names`` (a group of ``specs.py``) that the request carries, by name."""
    return {name: value for name in names if (value := optional_input(request, name)) is not None}


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


class Outputs:
    """Output tensors in the dtype the model's config declares (``specs.py`` writes it), so no adapter restates one."""

    def __init__(self, config: dict):
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}

    def __call__(self, name: str, values):
        return tensor(name, np.asarray(values, dtype=self.dtypes[name]))


def string_tensor(name: str, text: str):
    return pb_utils.Tensor(name, client.string(text))


def _wants_tagged_codes(request) -> bool:
    if request.request_id().startswith(errors.BLS_REQUEST_ID_PREFIX):
        return True
    try:
        return bool(json.loads(request.parameters() or "{}").get(errors.TAGGED_CODES_PARAMETER))
    except (ValueError, AttributeError):
        return False


def _log_if_internal(exc: BaseException) -> str:
    name = errors.code_name(exc)
    if name == "INTERNAL":
        pb_utils.Logger.log_error("".join(traceback.format_exception(exc)))
    return name


def error_response(exc: BaseException, request):
    """The error response for ``request``, its code decided by the exception's type (``errors.CODES``).
    Our faults (INTERNAL) are logged with the traceback; the client gets a short message."""
    name = _log_if_internal(exc)
    message = errors.tagged(exc) if _wants_tagged_codes(request) else errors.client_message(exc)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, name)))


def send(sender, request, outputs: list, final: bool = False) -> None:
    """Send one response of a decoupled model, the tensors referenced here until the send returns. Where the
    server's response sender drops unrequested outputs with the GIL released (compat.py: ``requested_outputs_only``)
    only the requested outputs go in: a tensor it dropped last would free its numpy array without the GIL."""
    if triton.requested_outputs_only:
        wanted = set(request.requested_output_names())
        kept = [t for t in outputs if t.name() in wanted]
    else:
        kept = list(outputs)
    flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
    sender.send(pb_utils.InferenceResponse(output_tensors=kept), flags=flags)
    del kept  # released here, with the GIL held, after the sender is done with it


def send_error(sender, request, exc: BaseException) -> None:
    """End a decoupled request with ``exc``: an error response, except for our BLS callers on a server that would
    lose it on the way (compat.py: ``error_output``), who get it in the ``ERROR`` output of a normal final response."""
    if triton.error_output and request.request_id().startswith(errors.BLS_REQUEST_ID_PREFIX):
        _log_if_internal(exc)
        send(sender, request, [string_tensor(errors.ERROR_OUTPUT, errors.tagged(exc))], final=True)
    else:
        sender.send(error_response(exc, request), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def serve_decoupled(request, threads, handle: Callable[[Any], None]) -> None:
    """Decoupled execute: ``handle(request)`` on a thread of ``threads`` (a ``BoundedThreads``), which sends the
    responses; with every thread busy the request ends at once with UNAVAILABLE."""
    try:
        threads.submit(lambda: handle(request))
    except Exception as exc:  # noqa: BLE001 - all threads busy: UNAVAILABLE for this request
        send_error(request.get_response_sender(), request, exc)


# The Triton trace of the request this thread serves, so that its BLS calls are traced as that request's children
# (bls._request passes it on; docs/performance.md#first-chunk-timeline). Only while ``execute`` runs: Triton 2.51's
# python backend releases every request, and the server deletes its trace, when ``execute`` returns, so a decoupled
# model's request thread (``serve_decoupled``) holds no trace: a BLS call given a released trace crashes the server.
_serving_trace: contextvars.ContextVar = contextvars.ContextVar("serving_trace", default=None)


def serving_trace():
    """The trace (``pb_utils.InferenceTrace``) of the request this thread serves inside ``execute``, or None."""
    return _serving_trace.get()


def _traced(handle: Callable[[Any], Any], request):
    reader = getattr(request, "trace", None)  # InferenceRequest.trace(): python backend r24.10 (Triton 2.51) on
    token = _serving_trace.set(reader() if reader is not None else None)
    try:
        return handle(request)
    finally:
        _serving_trace.reset(token)


def _answer(handle: Callable[[Any], list], request):
    """One request → its response. The exception is turned into a response here and dropped: a kept exception
    holds its traceback's frames, which hold the request and BLS responses past ``execute`` (see
    docs/hardening.md, the stub crash)."""
    try:
        return pb_utils.InferenceResponse(output_tensors=_traced(handle, request))
    except Exception as exc:  # noqa: BLE001 - every failure becomes that request's error response
        return error_response(exc, request)


def respond_each(requests, handle: Callable[[Any], list], pool=None) -> list:
    """Non-decoupled execute: one response per request; a failing request never fails its batch neighbours.
    With a thread ``pool`` the requests of one batch run concurrently (BLS calls and ONNX Runtime release the GIL)."""
    with idle_trim:
        if pool is None:
            return [_answer(handle, request) for request in requests]
        return [future.result() for future in [pool.submit(_answer, handle, request) for request in requests]]


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
