"""The gateway's one connection to Triton: gRPC asyncio streams to the decoupled models, readiness checks.

Leaving a stream early (client gone, error, ``aclose``) cancels its gRPC call; Triton then marks the request
cancelled and ``tts_stream`` / ``voice_chat_stream`` stop their LLM stream at its next step.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import numpy as np

from stepaudio_contract import client, errors
from stepaudio_contract.client import scalar, string  # noqa: F401 - the routes build their tensors with these

# The served model's error code (tagged into the message, gRPC stream errors carry none) → the gateway's status.
_STATUS = {"INVALID_ARG": 400, "UNAVAILABLE": 503, "CANCELLED": 499, "INTERNAL": 502}


class TritonError(RuntimeError):
    """Triton answered a request with an error; ``status`` is the HTTP status its code maps to."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

    @property
    def bad_input(self) -> bool:
        return self.status == 400


class TritonUnavailable(RuntimeError):
    """Triton cannot be reached."""


def sampling(seed: int | None, temperature: float | None, top_p: float | None) -> dict[str, np.ndarray]:
    """The optional LLM sampling inputs that were given."""
    return client.sampling({"seed": seed, "temperature": temperature, "top_p": top_p})


class Triton:
    def __init__(self, url: str, stall_timeout_s: float = 120.0):
        import tritonclient.grpc.aio as grpcaio

        self.url, self.stall_timeout_s = url, stall_timeout_s
        self.client = grpcaio.InferenceServerClient(url)

    async def close(self) -> None:
        await self.client.close()

    async def stream(self, model: str, tensors: dict[str, np.ndarray], outputs: list[str]) -> AsyncIterator[dict]:
        """One request to a decoupled model; yields {output: array} for the outputs each response carries."""
        import grpc

        inputs = client.infer_inputs(tensors)

        async def one_request():
            # The request side ends after one request; Triton closes the stream after that request's final response.
            yield {"model_name": model, "inputs": inputs, "outputs": client.requested_outputs(outputs),
                   "parameters": {errors.TAGGED_CODES_PARAMETER: True}}

        responses = self.client.stream_infer(one_request())
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(anext(responses), self.stall_timeout_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise TritonError(f"{model} sent nothing for {self.stall_timeout_s:.0f} s; retry", 503) from None
                if error is not None:
                    failure = errors.from_tagged(str(error.message() if hasattr(error, "message") else error), model)
                    raise TritonError(str(failure), _STATUS[errors.code_name(failure)])
                present = {o.name for o in result.get_response().outputs}
                values = {name: result.as_numpy(name) for name in outputs if name in present}
                if values:
                    yield values
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                raise
            raise TritonUnavailable(f"Triton at {self.url}: {exc.code().name}: {exc.details()}") from exc
        finally:
            responses.cancel()  # no-op once the call is done; otherwise Triton sees the cancellation

    async def not_ready(self, models: list[str], timeout_s: float = 5.0) -> list[str]:
        """Models (or "server") that are not ready now; empty when all are."""
        try:
            if not await self.client.is_server_ready(client_timeout=timeout_s):
                return ["server"]
            return [m for m in models if not await self.client.is_model_ready(m, client_timeout=timeout_s)]
        except Exception as exc:  # noqa: BLE001 - unreachable or timed out is "not ready", with the reason
            return [f"server ({type(exc).__name__})"]
