"""Error codes for the served models: each failure's code is decided by its exception type.

- ``ValueError`` (the library's bad-input signal) → INVALID_ARG;
- ``stepaudio.errors.Unavailable`` (a queue is full, a model this one calls is down) → UNAVAILABLE;
- ``stepaudio.errors.Cancelled`` (the stream was cancelled by its owner) → CANCELLED;
- anything else is our fault → INTERNAL, logged with its traceback.

Across BLS the code needs help: Triton hands every BLS error back to the caller as INTERNAL, whatever code
the called model sent, and gRPC stream errors carry no code at all (``compat.py``: ``tagged_error_codes``). A caller that wants the code sets the request
parameter ``TAGGED_CODES_PARAMETER`` (the gateway does) or a request id starting with ``BLS_REQUEST_ID_PREFIX``
(our BLS calls do); a model answering such a request writes
the code's name as a ``[NAME] `` prefix of the message (other clients never see it), and the caller turns that
prefix back into the same exception type (``from_tagged``). An error without the prefix comes from Triton or a
backend, not from our code (a dead stub, a model that is not loaded): UNAVAILABLE.
"""

from __future__ import annotations

import re

from stepaudio.errors import Cancelled, Unavailable

TAGGED_CODES_PARAMETER = "stepaudio_error_codes"
# Our BLS requests carry their ask in the request id instead of request parameters: BLS requests are sent the way
# this python backend build has always carried them (an id), and the id also holds a stream's cancel token.
BLS_REQUEST_ID_PREFIX = "stepaudio-bls-"
# Every decoupled model declares this output where the server needs it (``compat.py``: ``error_output``). A stream
# that a BLS caller consumes then ends with its error in this output (a tagged message) instead of an error
# response, which that server would deliver without the stream's id: the caller's stub would wait forever.
ERROR_OUTPUT = "ERROR"


# Exception type → Triton error code name (pb_utils.TritonError.<NAME>); the first match wins.
CODES: tuple[tuple[type[BaseException], str], ...] = (
    (ValueError, "INVALID_ARG"),
    (Unavailable, "UNAVAILABLE"),
    (Cancelled, "CANCELLED"),
    (BaseException, "INTERNAL"),
)
_EXCEPTION_FOR = {"INVALID_ARG": ValueError, "UNAVAILABLE": Unavailable, "CANCELLED": Cancelled, "INTERNAL": RuntimeError}
_PREFIX = re.compile(r"^\[(INVALID_ARG|UNAVAILABLE|CANCELLED|INTERNAL)\] ")


def code_name(exc: BaseException) -> str:
    return next(name for kind, name in CODES if isinstance(exc, kind))


def client_message(exc: BaseException) -> str:
    """What the client reads: bad input as its message, our faults with the exception type in front."""
    name = code_name(exc)
    return str(exc) if name != "INTERNAL" else f"internal error: {type(exc).__name__}: {exc}"


def tagged(exc: BaseException) -> str:
    return f"[{code_name(exc)}] {client_message(exc)}"


def from_tagged(message: str, model: str) -> BaseException:
    """A BLS error message → the exception the called model raised (see the module docstring)."""
    match = _PREFIX.match(message)
    if match is None:
        return Unavailable(f"{model} is unavailable: {message}")
    return _EXCEPTION_FOR[match[1]](message[match.end():])
