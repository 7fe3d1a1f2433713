"""Serving a Step1 generation engine from a decoupled python model: request tensors → ``GenerationRequest``,
token stream → responses, client cancellation → ``TokenStream.cancel()``."""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Callable

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio.llm.engine import FINISH_CANCELLED, GenerationRequest, TokenStream
from stepaudio.llm.sampling import SamplingParams
from stepaudio_triton.adapter import error_response, optional_scalar, optional_string, required_input

# Optional per-request sampling inputs shared by every LLM-backed model: (tensor name, field, cast).
SAMPLING_INPUTS = (
    ("TEMPERATURE", "temperature", float),
    ("TOP_K", "top_k", int),
    ("TOP_P", "top_p", float),
    ("SEED", "seed", int),
    ("MAX_NEW_TOKENS", "max_new_tokens", int),
)


def token_ranges(text: str) -> tuple[tuple[int, int], ...] | None:
    """A config's "lo:hi,lo:hi" → ((lo, hi), ...): the ids a model may generate (stop id included); "" = all."""
    if not text:
        return None
    try:
        return tuple((int(lo), int(hi)) for lo, hi in (part.split(":") for part in text.split(",")))
    except ValueError as exc:
        raise ValueError(f"allowed_token_ranges must look like 'lo:hi,lo:hi', got {text!r}") from exc


def sampling_from_request(request, defaults: SamplingParams) -> SamplingParams:
    overrides = {}
    for tensor_name, field_name, cast in SAMPLING_INPUTS:
        value = optional_scalar(request, tensor_name, cast)
        if value is not None:
            overrides[field_name] = value
    params = dataclasses.replace(defaults, **overrides)
    params.validate()
    return params


def prompt_ids(request, name: str = "INPUT_IDS") -> list[int]:
    ids = required_input(request, name)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer ids, got {ids.dtype}")
    return [int(i) for i in ids.reshape(-1)]


class LiveStreams:
    """Running generations by request id, so a caller can cancel one with a second request.

    Triton 2.51's python backend cannot cancel a BLS request (its ``ResponseIterator`` has no ``cancel``), so a
    model that consumes an LLM stream through BLS (``tts_stream``, ``voice_chat_stream``) stops it by sending
    ``CANCEL`` = the stream's request id to the LLM model; ``bls.Stream.cancel`` does that. A cancel may overtake
    its stream (both are requests to the same model), so an id cancelled before it was added is remembered and
    the stream is cancelled the moment it is added."""

    def __init__(self, remembered_cancels: int = 1024):
        self._streams: dict[str, TokenStream] = {}
        self._early_cancels: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remembered_cancels = remembered_cancels
        self._lock = threading.Lock()

    def add(self, request_id: str, stream: TokenStream) -> None:
        if not request_id:
            return
        with self._lock:
            cancelled_early = request_id in self._early_cancels
            if cancelled_early:
                del self._early_cancels[request_id]
            else:
                self._streams[request_id] = stream
        if cancelled_early:
            stream.cancel()

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._streams.pop(request_id, None)

    def cancel(self, request_id: str) -> bool:
        """Cancel the stream; True if it was running. An unknown id is remembered (bounded) for a later add."""
        with self._lock:
            stream = self._streams.pop(request_id, None)
            if stream is None:
                self._early_cancels[request_id] = None
                while len(self._early_cancels) > self._remembered_cancels:
                    self._early_cancels.popitem(last=False)
        if stream is not None:
            stream.cancel()
        return stream is not None


def answer_cancel(request, live: LiveStreams) -> bool:
    """If ``request`` is a cancel request (input CANCEL), cancel that stream, send the final flag, return True."""
    target = optional_string(request, "CANCEL")
    if target is None:
        return False
    live.cancel(target)
    request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    return True


def stream_tokens(
    stream: TokenStream,
    sender,
    respond: Callable[[list[int]], list],
    on_finish: Callable[[TokenStream], list] | None = None,
    live: LiveStreams | None = None,
) -> threading.Thread:
    """Send each id as it arrives (``respond(ids) → output tensors``, or None to send nothing for it), then the
    final flag. Runs on its own thread so ``execute`` returns at once; blocks on the stream's queue (no polling).
    Cancellation by the client is checked before every send and stops generation at the engine's next step; with
    ``live``, the stream is also cancellable by id (a CANCEL request) until it ends."""
    if live is not None:
        live.add(stream.request_id, stream)

    def run():
        try:
            for token_id in stream:
                if sender.is_cancelled():
                    stream.cancel()
                    break
                outputs = respond([token_id])
                if outputs:
                    sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
            if stream.finish_reason == FINISH_CANCELLED or sender.is_cancelled():
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            tail = on_finish(stream) if on_finish else None
            if tail:
                sender.send(pb_utils.InferenceResponse(output_tensors=tail), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the model stays up
            stream.cancel()
            sender.send(error_response(exc), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            if live is not None:
                live.discard(stream.request_id)

    thread = threading.Thread(target=run, name=f"stream-{stream.request_id}", daemon=True)
    thread.start()
    return thread


def ids_tensor(name: str, ids: list[int]):
    return pb_utils.Tensor(name, np.asarray(ids, dtype=np.int32))


__all__ = ["GenerationRequest", "SamplingParams", "prompt_ids", "sampling_from_request", "stream_tokens", "ids_tensor"]
