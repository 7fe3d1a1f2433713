"""Business-logic-scripting calls from one served model to another, with errors turned into exceptions."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils


class ComposedModelError(ValueError):
    """A called model answered with an error; it keeps that model's message (INVALID_ARG stays INVALID_ARG)."""


def _inputs(tensors: dict[str, np.ndarray]) -> list:
    return [pb_utils.Tensor(name, value) for name, value in tensors.items() if value is not None]


def _check(response, model: str):
    if response.has_error():
        message = response.error().message()
        code = response.error().code()
        if code == pb_utils.TritonError.INVALID_ARG:
            raise ComposedModelError(message)
        raise RuntimeError(f"{model}: {message}")
    return response


def outputs(response, names: list[str]) -> dict[str, np.ndarray]:
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in names}


async def call(model: str, tensors: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
    request = pb_utils.InferenceRequest(model_name=model, inputs=_inputs(tensors), requested_output_names=output_names)
    return outputs(_check(await request.async_exec(), model), output_names)


async def stream(model: str, tensors: dict[str, np.ndarray], output_names: list[str]):
    """A decoupled model's responses (the final, empty one is skipped); iterate with ``for``."""
    request = pb_utils.InferenceRequest(model_name=model, inputs=_inputs(tensors), requested_output_names=output_names)
    responses = await request.async_exec(decoupled=True)
    return _Responses(responses, model, output_names)


class _Responses:
    def __init__(self, responses, model: str, names: list[str]):
        self._responses, self._model, self._names = responses, model, names

    def __iter__(self):
        for response in self._responses:
            _check(response, self._model)
            if response.output_tensors():
                yield outputs(response, self._names)

    def cancel(self) -> None:
        self._responses.cancel()
