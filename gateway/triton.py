"""The gateway's one connection to Triton: gRPC asyncio streams to the decoupled models, readiness checks.

Leaving a stream early (client gone, error, ``aclose``) stops its request. On a server where cancelling a running
gRPC call can crash Triton (compat.py: ``in_band_grpc_cancel``) and the model takes ``CANCEL`` (``tts_stream``),
the request carries a secret cancel token and the gateway sends ``CANCEL`` = token, then reads the stream to its
end in the background; otherwise it cancels the gRPC call, Triton marks the request cancelled, and ``tts_stream`` /
``voice_chat_stream`` stop their LLM stream at its next step.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import AsyncIterator

import numpy as np

from stepaudio_contract import client, compat, errors
from stepaudio_contract.client import scalar, string  # noqa: F401 - the routes build their tensors with these

log = logging.getLogger("gateway.triton")
CANCEL_TOKEN_PARAMETER = "cancel_token"  # the request parameter the served models read (stepaudio_triton.bls)
DRAIN_TIMEOUT_S = 60.0  # a cancelled stream not ended by then is cancelled over gRPC after all

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
        self._features: compat.TritonFeatures | None = None
        self._takes_cancel: dict[str, bool] = {}  # model → it declares the CANCEL input
        self._draining: set[asyncio.Task] = set()  # streams being ended in band (kept referenced until done)

    async def close(self) -> None:
        for task in list(self._draining):
            task.cancel()
        await self.client.close()

    async def _cancels_in_band(self, model: str) -> bool:
        """Whether a stream of ``model`` is ended with CANCEL rather than a gRPC cancel (asked once per model)."""
        if self._features is None:
            metadata = await self.client.get_server_metadata()
            self._features = compat.TritonFeatures.for_version(metadata.version)
        if not self._features.in_band_grpc_cancel:
            return False
        if model not in self._takes_cancel:
            metadata = await self.client.get_model_metadata(model)
            self._takes_cancel[model] = any(i.name == "CANCEL" for i in metadata.inputs)
        return self._takes_cancel[model]

    def _end_in_band(self, model: str, token: str, responses) -> None:
        task = asyncio.get_running_loop().create_task(self._cancel_and_drain(model, token, responses))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _cancel_and_drain(self, model: str, token: str, responses) -> None:
        """CANCEL = token to ``model``, then the stream's remaining responses read and dropped until it ends."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                async def cancel_request():
                    yield {"model_name": model, "inputs": client.infer_inputs({"CANCEL": client.string(token)}),
                           "parameters": {errors.TAGGED_CODES_PARAMETER: True}}

                async for _ in self.client.stream_infer(cancel_request()):
                    pass
                async for _ in responses:
                    pass
        except Exception as exc:  # noqa: BLE001 - timed out or Triton gone: fall back to the gRPC cancel
            log.warning("%s stream not ended by CANCEL (%s); cancelling its gRPC call", model, type(exc).__name__)
        finally:
            responses.cancel()  # a no-op once the call has ended

    async def stream(self, model: str, tensors: dict[str, np.ndarray], outputs: list[str]) -> AsyncIterator[dict]:
        """One request to a decoupled model; yields {output: array} for the outputs each response carries."""
        import grpc

        inputs = client.infer_inputs(tensors)
        parameters = {errors.TAGGED_CODES_PARAMETER: True}
        token = None
        try:
            if await self._cancels_in_band(model):
                token = secrets.token_hex(16)
                parameters[CANCEL_TOKEN_PARAMETER] = token
        except grpc.aio.AioRpcError as exc:
            raise TritonUnavailable(f"Triton at {self.url}: {exc.code().name}: {exc.details()}") from exc

        async def one_request():
            # The request side ends after one request; Triton closes the stream after that request's final response.
            yield {"model_name": model, "inputs": inputs, "outputs": client.requested_outputs(outputs),
                   "parameters": parameters}

        responses = self.client.stream_infer(one_request())
        ended = False
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(anext(responses), self.stall_timeout_s)
                except StopAsyncIteration:
                    ended = True
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
            if token is not None and not ended:
                self._end_in_band(model, token, responses)  # the gRPC call is never cancelled while it runs
            else:
                responses.cancel()  # no-op once the call is done; otherwise Triton sees the cancellation

    async def not_ready(self, models: list[str], timeout_s: float = 5.0) -> list[str]:
        """Models (or "server") that are not ready now; empty when all are."""
        try:
            if not await self.client.is_server_ready(client_timeout=timeout_s):
                return ["server"]
            return [m for m in models if not await self.client.is_model_ready(m, client_timeout=timeout_s)]
        except Exception as exc:  # noqa: BLE001 - unreachable or timed out is "not ready", with the reason
            return [f"server ({type(exc).__name__})"]
