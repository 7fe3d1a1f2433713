"""Business-logic-scripting calls from one served model to another (synchronous; callers use threads so that
concurrent requests overlap), with a called model's errors turned into exceptions."""

from __future__ import annotations

import secrets

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio_triton import errors
from stepaudio_triton.adapter import owned

# The request parameter naming a stream's cancel token; generation.py reads it (one spelling for both sides).
CANCEL_TOKEN_PARAMETER = "cancel_token"


def _request(model: str, tensors: dict[str, np.ndarray], output_names: list[str], token: str | None = None):
    """The id marks the request as ours (the called model writes its error code into the message, errors.py) and
    carries the stream's cancel token when there is one."""
    return pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(name, value) for name, value in tensors.items() if value is not None],
        requested_output_names=output_names,
        request_id=errors.BLS_REQUEST_ID_PREFIX + (token or secrets.token_hex(8)),
    )


def raise_if_error(response, model: str) -> None:
    """A called model's error → the exception type it raised (``errors.from_tagged``)."""
    if response.has_error():
        raise errors.from_tagged(response.error().message(), model)


def outputs(response, names: list[str]) -> dict[str, np.ndarray]:
    """Copies, never views (``adapter.owned``): the arrays outlive the response and its shared memory."""
    return {name: owned(pb_utils.get_output_tensor_by_name(response, name)) for name in names}


def call(model: str, tensors: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
    response = _request(model, tensors, output_names).exec()
    raise_if_error(response, model)
    return outputs(response, output_names)


class Stream:
    """A decoupled model's responses as dicts of outputs (its empty final response is skipped).

    With ``cancellable`` the stream carries a secret cancel token (request parameter ``cancel_token``) and
    ``cancel()`` sends CANCEL = that token to the same model (see ``generation.LiveStreams``: the 2.51 python
    backend has no BLS cancellation); only the LLM models accept CANCEL."""

    def __init__(self, model: str, tensors: dict[str, np.ndarray], output_names: list[str], cancellable: bool = False):
        self.model, self.names = model, output_names
        self.cancel_token = secrets.token_hex(16) if cancellable else None
        self._responses = _request(model, tensors, output_names, self.cancel_token).exec(decoupled=True)
        self._cancelled = self._cancel_sent = False
        self.done = False  # the final response was read: nothing is left to drain

    def __iter__(self):
        if self.done:
            return
        for response in self._responses:
            if response.has_error():
                self.done = True
            raise_if_error(response, self.model)
            if response.output_tensors():
                yield outputs(response, self.names)
        self.done = True

    def request_cancel(self) -> None:
        """Send CANCEL = this stream's token and return: safe while another thread iterates the stream (that
        iteration then ends within one decode step, with the called model's CANCELLED error). Never raises."""
        if self._cancel_sent or self.cancel_token is None:
            return
        self._cancel_sent = True
        cancel = np.array([self.cancel_token.encode()], dtype=np.object_)
        try:
            for _ in _request(self.model, {"CANCEL": cancel}, []).exec(decoupled=True):
                pass
        except Exception:  # noqa: BLE001 - best effort, like cancel()
            pass

    def cancel(self) -> None:
        """Stop the stream and wait for its final response, so that the called model has freed the stream's
        engine slot when this returns and no response is left in flight for an abandoned iterator. The called
        model ends a cancelled stream within one decode step. Only for the thread that iterates the stream.

        Best effort, never raises: callers cancel while ending a request, often while reporting another error."""
        if self._cancelled or self.cancel_token is None:
            return
        self._cancelled = True
        if self.done:
            return
        self.request_cancel()
        try:
            for _ in self._responses:  # drain to the final response; a cancelled stream's errors do not matter
                pass
        except Exception:  # noqa: BLE001 - see the docstring
            pass
