"""Business-logic-scripting calls from one served model to another (synchronous; callers use threads so that
concurrent requests overlap), with a called model's errors turned into exceptions."""

from __future__ import annotations

import re
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils


def _request(model: str, tensors: dict[str, np.ndarray], output_names: list[str], request_id: str = ""):
    return pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(name, value) for name, value in tensors.items() if value is not None],
        requested_output_names=output_names,
        request_id=request_id,
    )


# ``adapter.error_response`` writes internal failures as "TypeName: message" and bad input as the bare message.
_INTERNAL_MESSAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Interrupt|Exit): ")


def raise_if_error(response, model: str) -> None:
    """INVALID_ARG from the called model stays a ValueError (so it reaches the client as INVALID_ARG).

    Triton 2.51 hands every BLS error back as INTERNAL, whatever code the called model sent (measured, decoupled
    or not), so the message decides: our models write internal failures as "TypeName: message"
    (``adapter.error_response``) and bad input as the bare message."""
    if response.has_error():
        error = response.error()
        message = error.message()
        invalid = error.code() == pb_utils.TritonError.INVALID_ARG or not _INTERNAL_MESSAGE.match(message)
        if invalid:
            raise ValueError(message)
        raise RuntimeError(f"{model}: {message}")


def outputs(response, names: list[str]) -> dict[str, np.ndarray]:
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in names}


def call(model: str, tensors: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
    response = _request(model, tensors, output_names).exec()
    raise_if_error(response, model)
    return outputs(response, output_names)


class Stream:
    """A decoupled model's responses as dicts of outputs (its empty final response is skipped).

    ``cancel()`` sends CANCEL = this stream's request id to the same model (see ``generation.LiveStreams``: the
    2.51 python backend has no BLS cancellation); only models that accept CANCEL can be cancelled."""

    def __init__(self, model: str, tensors: dict[str, np.ndarray], output_names: list[str]):
        self.model, self.names = model, output_names
        self.request_id = uuid.uuid4().hex
        self._responses = _request(model, tensors, output_names, self.request_id).exec(decoupled=True)
        self._cancelled = False

    def __iter__(self):
        for response in self._responses:
            raise_if_error(response, self.model)
            if response.output_tensors():
                yield outputs(response, self.names)

    def cancel(self) -> None:
        """Stop the stream and wait for its final response, so that the called model has freed the stream's
        engine slot when this returns and no response is left in flight for an abandoned iterator. The called
        model ends a cancelled stream within one decode step.

        Best effort, never raises: callers cancel while ending a request, often while reporting another error."""
        if self._cancelled:
            return
        self._cancelled = True
        cancel = np.array([self.request_id.encode()], dtype=np.object_)
        try:
            for _ in _request(self.model, {"CANCEL": cancel}, []).exec(decoupled=True):
                pass
            for _ in self._responses:  # drain to the final response; a cancelled stream's errors do not matter
                pass
        except Exception:  # noqa: BLE001 - see the docstring
            pass
