"""What the HTTP guard checks in a request body before Triton parses it (docs/hardening.md#the-guard).

The JSON checked is the JSON Triton will parse: the whole body of ``generate`` / ``generate_stream`` and of every
other JSON endpoint; for ``infer``, the first ``Inference-Header-Content-Length`` bytes (the whole body when the
header is absent), with the binary part's framing checked against the inputs' ``binary_data_size``.

Parsing is orjson's (C, one linear pass, refuses nesting past 1024 by itself); our ``max_json_depth`` is then
checked on the parsed value without recursion. The guard runs large checks in worker processes
(``CheckPool``): a parse holds the GIL, and a body of many tiny values costs ~30× its size in Python objects, so
each worker has an address-space limit and the guard's event loop never waits on a parse.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
from dataclasses import dataclass

import orjson

from stepaudio_server.model_facts import InputFact, generate_refusal

GENERATE, INFER, OTHER = "generate", "infer", "other"


@dataclass(frozen=True)
class BodyCheck:
    """One body to check; ``json_length`` is the validated Inference-Header-Content-Length (None: absent)."""

    kind: str
    json_length: int | None
    max_depth: int
    max_string_bytes: int = 1024 * 1024  # Triton crashes on one JSON string of ~8 MB (docs/hardening.md)
    max_object_keys: int = 1024  # and on a generate body of 5.6 M keys; a request needs a few dozen
    inputs: tuple[InputFact, ...] | None = None  # a generate body's model inputs (None: not known, not checked)
    # Arrays + objects, counted as bytes before the parse: a request needs one per input and per nesting level of a
    # batched tensor; a 64 MiB body of 21 M empty lists took a worker ~12 s to parse into 21 M Python lists.
    max_containers: int = 65536

    def validate(self) -> None:
        if self.kind not in (GENERATE, INFER, OTHER):
            raise ValueError(f"unknown body kind {self.kind!r}")
        if self.json_length is not None and self.kind != INFER:
            raise ValueError("only infer requests carry a binary part")


def deeper_than(value: object, limit: int) -> bool:
    """Whether arrays/objects nest more than ``limit`` levels (iterative: no recursion on hostile input)."""
    return _structure_refusal(value, limit, None, None) is not None


def _longest_string(strings) -> int:
    return max((len(text) for text in strings if isinstance(text, str)), default=0)


def _structure_refusal(value: object, max_depth: int, max_string: int | None, max_keys: int | None) -> str | None:
    """Nesting past ``max_depth`` or a string (key or value) longer than ``max_string`` bytes in UTF-8."""
    if isinstance(value, str):
        return _string_refusal(value, max_string)
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
            if max_keys is not None and len(item) > max_keys:
                return f"a JSON object with more than {max_keys} members"
            if max_string is not None and _longest_string(item) > max_string // 4:
                for key in item:
                    if (why := _string_refusal(key, max_string)) is not None:
                        return why
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return f"JSON nesting deeper than {max_depth} levels"
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, str) and max_string is not None and len(child) > max_string // 4:
                if (why := _string_refusal(child, max_string)) is not None:
                    return why
    return None


def _string_refusal(text: str, max_string: int | None) -> str | None:
    # Counted in UTF-8 bytes, as Triton holds it; only strings that could be over the bound are encoded.
    if max_string is not None and len(text) > max_string // 4 and len(text.encode(errors="surrogatepass")) > max_string:
        return f"a JSON string longer than {max_string} bytes (send large data as a binary tensor)"
    return None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _framing_refusal(document: dict, binary_bytes: int) -> str | None:
    """Triton reads each input's ``binary_data_size`` bytes from the binary part, in order: they must add up to
    exactly the bytes that follow the JSON header, or Triton and the guard disagree on what the body is."""
    inputs = document.get("inputs", [])  # absent: Triton says what is missing
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        return "'inputs' must be a list of objects"
    declared = 0
    for tensor in inputs:
        parameters = tensor.get("parameters", {})
        if not isinstance(parameters, dict):
            return "an input's 'parameters' must be an object"
        size = parameters.get("binary_data_size")
        if size is not None:
            if not _is_count(size):
                return "binary_data_size must be a non-negative integer"
            declared += size
    if declared != binary_bytes:
        return (f"the inputs' binary_data_size add up to {declared} bytes but {binary_bytes} bytes follow the "
                "JSON header")
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        return "'outputs' must be a list of objects"
    for tensor in outputs:
        parameters = tensor.get("parameters", {})
        if not isinstance(parameters, dict):
            return "an output's 'parameters' must be an object"
        if "binary_data" in parameters and not isinstance(parameters["binary_data"], bool):
            return "an output's binary_data must be true or false"
        if "classification" in parameters and not (_is_count(parameters["classification"])
                                                    and parameters["classification"] <= 1 << 16):
            return "an output's classification must be an integer from 0 to 65536"
    return None


def refusal(body: bytes, check: BodyCheck) -> str | None:
    """Why the body must not reach Triton, or None. Runs inline for small bodies, in a ``CheckPool`` worker
    for large ones (where the address-space limit turns a body of too many values into a refusal)."""
    try:
        return _refusal(body, check)
    except MemoryError:
        return "the JSON holds too many values to check"


def _refusal(body: bytes, check: BodyCheck) -> str | None:
    check.validate()
    end = check.json_length if check.json_length is not None else len(body)
    # An upper bound (brackets inside strings count too), in one C pass over the bytes: tens of ms for 64 MiB.
    if body.count(b"[", 0, end) + body.count(b"{", 0, end) > check.max_containers:
        return f"the JSON holds more than {check.max_containers} arrays and objects"
    json_part = memoryview(body)[:end]
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        if "depth limit exceeded" in str(exc):  # orjson's own bound (1024) is above ours: say what was wrong
            return f"JSON nesting deeper than {check.max_depth} levels"
        return f"the body is not valid JSON: {exc}"
    json_part.release()
    if check.kind != OTHER and not isinstance(document, dict):
        return "the JSON must be an object"
    why = _structure_refusal(document, check.max_depth, check.max_string_bytes, check.max_object_keys)
    if why is not None:
        return why
    if check.kind == INFER:
        binary_bytes = len(body) - (check.json_length if check.json_length is not None else len(body))
        return _framing_refusal(document, binary_bytes)
    if check.kind == GENERATE and check.inputs is not None:
        return generate_refusal(document, check.inputs)
    return None


def _limit_worker_memory(address_space_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))


class CheckPool:
    """Worker processes that run ``refusal`` on large bodies, each with an address-space limit (a parse that
    needs more is refused, never the guard's own memory). ``spawn``: the launcher has threads, and a fork of a
    threaded process may inherit a held lock."""

    def __init__(self, workers: int, memory_bytes: int):
        self.workers, self.memory_bytes = workers, memory_bytes
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_limit_worker_memory, initargs=(self.memory_bytes,))

    def submit(self, body: bytes, check: BodyCheck) -> concurrent.futures.Future:
        try:
            return self._pool.submit(refusal, body, check)
        except concurrent.futures.process.BrokenProcessPool:
            # A worker killed from outside (OOM killer) breaks the pool: start a fresh one for what follows.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(refusal, body, check)

    def warm_up(self) -> None:
        """Start the workers now (spawn costs ~0.2 s each), not on the first large request."""
        for future in [self._pool.submit(refusal, b"{}", BodyCheck(OTHER, None, 8)) for _ in range(self.workers)]:
            future.result(timeout=60)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
