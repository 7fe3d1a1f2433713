"""Serving a Step1 generation engine from a decoupled python model: request tensors → ``GenerationRequest``,
token stream → responses, client cancellation → ``TokenStream.cancel()``."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from typing import Callable

import triton_python_backend_utils as pb_utils

from stepaudio.errors import Cancelled
from stepaudio.llm.engine import TokenStream
from stepaudio.llm.sampling import SamplingParams
from stepaudio_contract import specs
from stepaudio_contract.errors import BLS_REQUEST_ID_PREFIX
from stepaudio_triton import adapter
from stepaudio_triton.adapter import optional_scalar, optional_string, required_input, send, send_error
from stepaudio_triton.bls import CANCEL_TOKEN_PARAMETER
from stepaudio_triton.threads import BoundedThreads

MIN_CANCEL_TOKEN_CHARS = 16


def token_ranges(text: str) -> tuple[tuple[int, int], ...] | None:
    """A config's "lo:hi,lo:hi" → ((lo, hi), ...): the ids a model may generate (stop id included); "" = all."""
    if not text:
        return None
    try:
        return tuple((int(lo), int(hi)) for lo, hi in (part.split(":") for part in text.split(",")))
    except ValueError as exc:
        raise ValueError(f"allowed_token_ranges must look like 'lo:hi,lo:hi', got {text!r}") from exc


def sampling_from_request(request, defaults: SamplingParams, max_new_tokens_limit: int | None = None) -> SamplingParams:
    """The request's sampling inputs over ``defaults``; MAX_NEW_TOKENS above the model's limit is refused."""
    overrides = {}
    for sampling_input in specs.SAMPLING:  # each named after its SamplingParams field
        value = optional_scalar(request, sampling_input.name, sampling_input.python_type)
        if value is not None:
            overrides[sampling_input.name.lower()] = value
    params = dataclasses.replace(defaults, **overrides)
    params.validate()
    limit = max_new_tokens_limit or defaults.max_new_tokens
    if params.max_new_tokens > limit:
        raise ValueError(f"MAX_NEW_TOKENS must be at most {limit} for this model, got {params.max_new_tokens}")
    return params


def prompt_ids(request, name: str = "INPUT_IDS") -> list[int]:
    ids = required_input(request, name)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer ids, got {ids.dtype}")
    return [int(i) for i in ids.reshape(-1)]


def cancel_token(request) -> str | None:
    """The request parameter ``CANCEL_TOKEN_PARAMETER``: a secret chosen by the stream's owner (BLS callers use
    16 random bytes), the only key a CANCEL request can name. No token: cancellable by its client only, and so is
    every stream on a server that cancels BLS requests itself (compat.py: ``cancel_input``)."""
    if not adapter.triton.cancel_input:
        return None
    try:
        token = json.loads(request.parameters() or "{}").get(CANCEL_TOKEN_PARAMETER)
    except ValueError:
        token = None
    if token is None:
        request_id = request.request_id()
        if not request_id.startswith(BLS_REQUEST_ID_PREFIX):
            return None
        token = request_id[len(BLS_REQUEST_ID_PREFIX):]  # our BLS callers: 16 random bytes after the prefix
    if not isinstance(token, str) or len(token) < MIN_CANCEL_TOKEN_CHARS:
        raise ValueError(f"parameter {CANCEL_TOKEN_PARAMETER} must be a string of at least {MIN_CANCEL_TOKEN_CHARS} characters")
    return token


class CancelFlag(threading.Event):
    """What ``LiveStreams`` cancels for a model that is not an LLM stream itself (``tts_stream``,
    ``voice_chat_stream``): set by a CANCEL naming the request's token; the model checks it at every step, and
    ``then`` (e.g. ``ChatTurn.stop``) is called at once."""

    def __init__(self, then: Callable[[], None] | None = None):
        super().__init__()
        self.then = then

    def cancel(self) -> None:
        self.set()
        if self.then is not None:
            self.then()


class LiveStreams:
    """Running generations by cancel token, so their owner can cancel one with a second request.

    Where the python backend cannot cancel a BLS request (compat.py: ``cancel_input``), a model that consumes an
    LLM stream through BLS (``tts``, ``tts_stream``, ``voice_chat*``) stops it by sending ``CANCEL`` = the stream's
    secret cancel token to the LLM model; ``bls.Stream.cancel`` does that. Keys are
    tokens, never request ids: only the client that chose a stream's token can end it. A cancel may overtake its
    stream (both are requests to the same model), so a token cancelled before it was added is remembered (bounded)
    and its stream is cancelled the moment it is added."""

    def __init__(self, remembered_cancels: int = 1024):
        self._streams: dict[str, TokenStream] = {}
        self._early_cancels: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remembered_cancels = remembered_cancels
        self._lock = threading.Lock()

    def add(self, token: str, stream: TokenStream) -> None:
        with self._lock:
            cancelled_early = token in self._early_cancels
            if cancelled_early:
                del self._early_cancels[token]
            else:
                self._streams[token] = stream
        if cancelled_early:
            stream.cancel()

    def discard(self, token: str) -> None:
        with self._lock:
            self._streams.pop(token, None)

    def cancel(self, token: str) -> bool:
        """Cancel the stream; True if it was running. An unknown token is remembered (bounded) for a later add."""
        with self._lock:
            stream = self._streams.pop(token, None)
            if stream is None:
                self._early_cancels[token] = None
                while len(self._early_cancels) > self._remembered_cancels:
                    self._early_cancels.popitem(last=False)
        if stream is not None:
            stream.cancel()
        return stream is not None


def answer_cancel(request, live: LiveStreams) -> bool:
    """If ``request`` is a cancel request (input CANCEL = a cancel token), cancel that stream, send the final flag,
    return True. Never on a server without the CANCEL input (compat.py: ``cancel_input``)."""
    if not adapter.triton.cancel_input:
        return False
    target = optional_string(request, "CANCEL")
    if target is None:
        return False
    live.cancel(target)
    request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    return True


def stream_tokens(
    stream: TokenStream,
    request,
    respond: Callable[[list[int]], list],
    live: LiveStreams,
    token: str | None,
    workers: BoundedThreads,
) -> None:
    """Send the ids as they arrive (``respond(ids) → output tensors``, or None to send nothing for them; one id, or
    every id already made when the previous response has left), then the final flag. Runs on one of ``workers`` so
    ``execute`` returns at once; blocks on the stream's queue (no polling). The client's own cancellation is checked
    before every send and stops generation at the engine's next step; with a ``token`` the stream is also
    cancellable by a CANCEL request naming it, and then ends with a CANCELLED error so its client cannot mistake it
    for a complete result."""
    sender = request.get_response_sender()

    def run():
        sent = 0
        try:
            for token_id in stream:
                if sender.is_cancelled():
                    stream.cancel()
                    break
                # With the ids the engine made while the last response was on its way: one response for them all
                # (never a wait for more), so a consumer behind the engine catches up instead of falling further back.
                ids = [token_id, *stream.ready()]
                outputs = respond(ids)
                sent += len(ids)
                if outputs:
                    send(sender, request, outputs)
            if sender.is_cancelled():
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            elif stream.cancel_requested:  # by a CANCEL naming its token (iteration ends before the engine retires it)
                send_error(sender, request, Cancelled(f"stream cancelled by its owner after {sent} ids"))
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the model stays up
            stream.cancel()
            send_error(sender, request, exc)
        finally:
            if token is not None:
                live.discard(token)

    if token is not None:
        live.add(token, stream)
    try:
        workers.submit(run)
    except Exception:
        stream.cancel()  # no thread to stream it: free its engine slot
        if token is not None:
            live.discard(token)
        raise


def serve_generation(request, live: LiveStreams, workers: BoundedThreads, submit: Callable, respond_for: Callable) -> None:
    """One LLM request of a decoupled model: a CANCEL request is answered at once; otherwise ``submit(request)``
    (→ TokenStream, raising ``ValueError`` for bad input) and its ids are streamed with ``respond_for(stream)``."""
    if answer_cancel(request, live):
        return
    try:
        token = cancel_token(request)
        stream = submit(request)
        stream_tokens(stream, request, respond_for(stream), live, token, workers)
    except Exception as exc:  # noqa: BLE001 - bad input or a full model answers this request only
        send_error(request.get_response_sender(), request, exc)


# What the LLM models import from here.
__all__ = [
    "CancelFlag",
    "LiveStreams",
    "answer_cancel",
    "cancel_token",
    "prompt_ids",
    "sampling_from_request",
    "serve_generation",
    "stream_tokens",
    "token_ranges",
]
