"""Business-logic-scripting calls from one served model to another (synchronous; callers use threads so that
concurrent requests overlap), with a called model's errors turned into exceptions."""

from __future__ import annotations

import collections
import queue
import secrets
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio.errors import Unavailable
from stepaudio_contract import client, errors
from stepaudio_triton import adapter
from stepaudio_triton.adapter import owned, parameter

# The request parameter naming a stream's cancel token; generation.py reads it (one spelling for both sides).
CANCEL_TOKEN_PARAMETER = "cancel_token"


def _request(model: str, tensors: dict[str, np.ndarray], output_names: list[str], token: str | None = None,
             correlation_id: int | None = None, start: bool = False, end: bool = False, trace=None):
    """The id marks the request as ours (the called model writes its error code into the message, errors.py) and
    carries the stream's cancel token when there is one. ``correlation_id`` with ``start`` / ``end``: one request of
    a sequence model's sequence (the session's ``vad``). ``trace``: the caller's Triton trace, so the call is traced
    as its child; by default the trace of the request this thread serves (``adapter.serving_trace``)."""
    extra = {}
    trace = trace if trace is not None else adapter.serving_trace()
    if trace is not None:
        extra["trace"] = trace
    if correlation_id is not None:
        flags = (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if start else 0) | (
            pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if end else 0)
        extra |= {"correlation_id": correlation_id, "flags": flags}
    return pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(name, value) for name, value in tensors.items() if value is not None],
        requested_output_names=output_names,
        request_id=errors.BLS_REQUEST_ID_PREFIX + (token or secrets.token_hex(8)),
        **extra,
    )


def raise_if_error(response, model: str) -> None:
    """A called model's error → the exception type it raised (``errors.from_tagged``)."""
    if response.has_error():
        raise errors.from_tagged(response.error().message(), model)


def outputs(response, names: list[str]) -> dict[str, np.ndarray]:
    """Copies, never views (``adapter.owned``): the arrays outlive the response and its shared memory."""
    return {name: owned(pb_utils.get_output_tensor_by_name(response, name)) for name in names}


def call(model: str, tensors: dict[str, np.ndarray], output_names: list[str], correlation_id: int | None = None,
         start: bool = False, end: bool = False) -> dict[str, np.ndarray]:
    response = _request(model, tensors, output_names, correlation_id=correlation_id, start=start, end=end).exec()
    raise_if_error(response, model)
    return outputs(response, output_names)


class Stream:
    """A decoupled model's responses as dicts of outputs (its empty final response is skipped).

    One reader thread per stream makes the request, reads every response and releases it; only copies (arrays,
    error messages) cross to the consumer. Two reasons: a response's Python objects crashed the stub when they
    were read on one thread and used on another (docs/hardening.md), and Triton never ends the decoupled streams
    of a stub that died (compat.py: ``stalled_bls_streams``), so the consumer must be able to stop waiting: a
    stream that sends nothing for ``stall_timeout_s`` raises ``Unavailable``. Its reader stays blocked on the dead
    stub's stream (nothing can end it); it is a daemon thread and is counted in ``abandoned_readers``.

    A ``cancellable`` stream can be stopped with ``cancel()`` / ``request_cancel()``: by the response iterator's
    own ``cancel()`` where the server has it, else (compat.py: ``cancel_input``) the stream carries a secret cancel
    token in its request id and CANCEL = that token goes to the same model (``generation.LiveStreams``); only the
    LLM models and ``tts_stream`` accept CANCEL."""

    def __init__(self, model: str, tensors: dict[str, np.ndarray], output_names: list[str], cancellable: bool = False,
                 stall_timeout_s: float | None = None):
        self.model, self.names = model, output_names
        self.cancellable = cancellable
        self.cancel_token = secrets.token_hex(16) if cancellable and adapter.triton.cancel_input else None
        self._responses = None  # a natively cancellable stream's response iterator, while it runs
        self.stall_timeout_s = stall_timeout_s or stall_timeout.seconds
        self._items: queue.Queue = queue.Queue()
        self._ended = self._cancelled = self._cancel_sent = self._stalled = False
        self._submitted = threading.Event()
        self._trace = adapter.serving_trace()  # the caller's: the reader thread serves no request of its own
        self._reader = threading.Thread(target=self._read, args=(tensors,), name=f"bls-{model}", daemon=True)
        self._reader.start()
        self._submitted.wait()  # the request is on its way when the constructor returns (a CANCEL comes after it)

    def _read(self, tensors: dict[str, np.ndarray]) -> None:
        responses = None
        try:
            try:
                wanted = [*self.names, errors.ERROR_OUTPUT] if adapter.triton.error_output else self.names
                responses = _request(self.model, tensors, wanted, self.cancel_token,
                                     trace=self._trace).exec(decoupled=True)
                if self.cancellable and self.cancel_token is None:
                    self._responses = responses  # for request_cancel, until the stream ends
            finally:
                self._submitted.set()
            for response in responses:
                if response.has_error():  # with error_output: only a first response (see errors.ERROR_OUTPUT)
                    self._items.put((_ERROR, response.error().message()))
                elif (error := pb_utils.get_output_tensor_by_name(response, errors.ERROR_OUTPUT)) is not None:
                    self._items.put((_ERROR, owned(error).reshape(-1)[0].decode("utf-8")))
                elif response.output_tensors():
                    self._items.put((_OUTPUTS, outputs(response, self.names)))
        except Exception as exc:  # noqa: BLE001 - the request could not be made (e.g. the model is not loaded)
            self._items.put((_ERROR, str(exc)))
        finally:
            self._responses = None
            if responses is not None:
                retired.keep(responses)
            self._items.put((_END, None))

    def _next(self, timeout_s: float) -> tuple[str, object]:
        try:
            return self._items.get(timeout=timeout_s)
        except queue.Empty:
            self._stalled = True
            stall_timeout.abandoned_readers += 1
            message = f"{self.model} sent nothing for {timeout_s:g} s (its instance may have died); request abandoned"
            pb_utils.Logger.log_error(f"{message} ({stall_timeout.abandoned_readers} abandoned in this stub)")
            raise Unavailable(message) from None

    def __iter__(self):
        while not self._ended:
            kind, item = self._next(self.stall_timeout_s)
            if kind == _END:
                self._ended = True
            elif kind == _ERROR:
                raise errors.from_tagged(item, self.model)
            else:
                yield item

    def request_cancel(self) -> None:
        """Ask the called model to stop the stream and return; the thread iterating the stream then sees its end
        (``Cancelled`` with a CANCEL request) within one of the called model's steps. Best effort, never raises."""
        if self._cancel_sent or self._stalled or self._ended or not self.cancellable:
            return
        self._cancel_sent = True
        if self.cancel_token is None:  # the server cancels BLS requests itself
            try:
                if (responses := self._responses) is not None:
                    responses.cancel()
            except Exception:  # noqa: BLE001 - see the docstring
                pass
            return
        cancel = client.string(self.cancel_token)
        try:
            acknowledgement = _request(self.model, {"CANCEL": cancel}, []).exec(decoupled=True)
            for _ in acknowledgement:
                pass
            retired.keep(acknowledgement)
        except Exception:  # noqa: BLE001 - see the docstring
            pass

    def cancel(self) -> None:
        """Stop the stream and wait for its final response, so that the called model has freed the stream's
        engine slot when this returns. The called model ends a cancelled stream within one decode step. Only for
        the thread that iterates the stream.

        Best effort, never raises: callers cancel while ending a request, often while reporting another error."""
        if self._cancelled or self._stalled or not self.cancellable:
            return
        self._cancelled = True
        self.request_cancel()
        try:
            while not self._ended:  # drain to the final response; a cancelled stream's errors do not matter
                self._ended = self._next(self.stall_timeout_s)[0] == _END
        except Exception:  # noqa: BLE001 - see the docstring
            pass


_OUTPUTS, _ERROR, _END = "outputs", "error", "end"


class RetiredIterators:
    """Finished BLS response iterators, kept for ``grace_s`` and then released here, with the GIL held, on a server
    that needs it (compat.py: ``retired_iterators``; elsewhere ``keep`` drops the iterator at once).

    There an iterator is owned twice: by Python and by the stub's own table, from which a background thread erases
    it, without the GIL, shortly after the final response. If that erase drops the last owner, the iterator's
    responses are destroyed on that thread and their tensors' numpy arrays are freed without the GIL, corrupting
    the interpreter's memory: the random stub segfaults. Keeping our reference well past the erase makes ours the
    last one."""

    def __init__(self, grace_s: float = 30.0):
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._kept: collections.deque = collections.deque()

    def keep(self, iterator) -> None:
        if not adapter.triton.retired_iterators:
            return
        now = time.monotonic()
        with self._lock:
            self._kept.append((now, iterator))
            expired = []
            while self._kept and self._kept[0][0] + self.grace_s <= now:
                expired.append(self._kept.popleft()[1])
        del expired  # the last references, dropped by this Python thread

    def __len__(self) -> int:
        return len(self._kept)


retired = RetiredIterators()


class _StallTimeout:
    """The stub-wide default of ``Stream.stall_timeout_s``, from the model config (``configure``)."""

    PARAMETER = "bls_stall_timeout_s"

    def __init__(self):
        self.seconds = 60.0
        self.abandoned_readers = 0  # reader threads left blocked on a stream that never ended


stall_timeout = _StallTimeout()


def configure(config: dict) -> None:
    """Read this stub's BLS settings from its model config (call in ``initialize``)."""
    stall_timeout.seconds = parameter(config, _StallTimeout.PARAMETER, stall_timeout.seconds, float)


class Transport:
    """``chat_turn.Transport`` over BLS: the served models' calls and streams from inside a stub."""

    call = staticmethod(call)

    @staticmethod
    def stream(model: str, inputs: dict[str, np.ndarray], outputs: list[str], cancellable: bool = False) -> Stream:
        return Stream(model, inputs, outputs, cancellable=cancellable)


transport = Transport()
