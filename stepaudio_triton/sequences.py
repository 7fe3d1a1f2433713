"""Per-sequence state for models behind Triton's sequence batcher (correlation id + START/END controls).

The state lives in the model's own table, keyed by correlation id, not in Triton's implicit state: a session's state
is Python objects of changing size (a resampler's phase, unconsumed samples, encoder caches, a tokenizer stream),
not a few fixed tensors. Triton's sequence batcher still routes every request of a sequence to the same instance,
in order, refuses a request of a sequence that never STARTed or has ENDed, and drops an idle sequence after
``max_sequence_idle_microseconds`` — but it does not tell the python model, so the table reaps idle entries itself
with the same timeout (``reap``, on every execute) and caps how many live at once.

The number of live sequences is a gauge on Triton's metrics endpoint: ``stepaudio_live_sequences{model=...}``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import triton_python_backend_utils as pb_utils

from stepaudio.errors import Unavailable
from stepaudio_triton.adapter import optional_input, rendered_parameter

T = TypeVar("T")


@dataclass(frozen=True)
class SequenceControls:
    correlation_id: int
    start: bool
    end: bool

    @classmethod
    def from_request(cls, request) -> SequenceControls:
        def flag(name: str) -> bool:
            value = optional_input(request, name)
            return value is not None and bool(value.reshape(-1)[0])

        correlation_id = request.correlation_id()
        if not isinstance(correlation_id, int) or correlation_id == 0:
            raise ValueError("send the request as part of a sequence (a non-zero numeric sequence id)")
        return cls(correlation_id, flag("START"), flag("END"))


class LiveGauge:
    """``stepaudio_live_sequences{model=<name>}`` on the metrics endpoint."""

    def __init__(self, model: str):
        self.family = pb_utils.MetricFamily(name="stepaudio_live_sequences", description="live sequences (sessions) per model",
                                            kind=pb_utils.MetricFamily.GAUGE)
        self.metric = self.family.Metric(labels={"model": model})

    def set(self, value: int) -> None:
        self.metric.set(value)

    def close(self) -> None:
        del self.metric  # a Metric must go before its family
        del self.family


class SequenceTable(Generic[T]):
    def __init__(self, model: str, max_live: int, idle_timeout_s: float, close: Callable[[T], None] = lambda state: None,
                 clock: Callable[[], float] = time.monotonic, gauge: LiveGauge | None = None):
        if max_live < 1 or idle_timeout_s <= 0:
            raise ValueError(f"{model}: max_live must be ≥ 1 and idle_timeout_s > 0")
        self.model, self.max_live, self.idle_timeout_s = model, max_live, idle_timeout_s
        self._close, self._clock, self._gauge = close, clock, gauge
        self._entries: dict[int, list] = {}  # id → [state, last used]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, correlation_id: int, make: Callable[[], T]) -> T:
        """START: a new state (a START on a live id replaces its state: the client began again)."""
        self.reap()
        with self._lock:
            old = self._entries.pop(correlation_id, None)
            full = len(self._entries) >= self.max_live
        if old is not None:
            self._close(old[0])
        if full:
            self._update_gauge()
            raise Unavailable(f"{self.model} holds its maximum of {self.max_live} live sessions; retry later")
        state = make()  # may raise ValueError for bad START inputs: nothing was added
        with self._lock:
            self._entries[correlation_id] = [state, self._clock()]
        self._update_gauge()
        return state

    def get(self, correlation_id: int) -> T:
        with self._lock:
            entry = self._entries.get(correlation_id)
            if entry is None:
                raise ValueError(f"sequence {correlation_id} is not live in {self.model} (ended, timed out or never "
                                 "started): send START first")
            entry[1] = self._clock()
            return entry[0]

    def close(self, correlation_id: int) -> T | None:
        with self._lock:
            entry = self._entries.pop(correlation_id, None)
        if entry is not None:
            self._close(entry[0])
        self._update_gauge()
        return None if entry is None else entry[0]

    def reap(self) -> list[int]:
        """Drop the sequences idle for longer than the timeout; their ids."""
        now = self._clock()
        with self._lock:
            idle = [cid for cid, (_, used) in self._entries.items() if now - used >= self.idle_timeout_s]
            dropped = [self._entries.pop(cid)[0] for cid in idle]
        for state in dropped:
            self._close(state)
        if idle:
            self._update_gauge()
        return idle

    def close_all(self) -> None:
        with self._lock:
            states = [state for state, _ in self._entries.values()]
            self._entries.clear()
        for state in states:
            self._close(state)

    def _update_gauge(self) -> None:
        if self._gauge is not None:
            self._gauge.set(len(self._entries))


def reaper(table: SequenceTable, every_s: float) -> tuple[threading.Thread, threading.Event]:
    """A thread that reaps ``table`` every ``every_s`` seconds (a session nobody sends to is freed on time even when
    the model gets no requests); set the event and join the thread in ``finalize``."""
    stop = threading.Event()

    def run():
        while not stop.wait(every_s):
            table.reap()

    thread = threading.Thread(target=run, name=f"{table.model}-reaper", daemon=True)
    thread.start()
    return thread, stop


class Sessions:
    """A sequence model's live sessions (``vad``, ``stream_tokenizer``): the table, sized and timed by the rendered
    ``max_sessions`` / ``idle_timeout_s``, its gauge, and the reaper that frees idle sessions."""

    def __init__(self, model: str, config: dict):
        self.gauge = LiveGauge(model)
        idle = rendered_parameter(config, "idle_timeout_s", float)
        self.table = SequenceTable(model, rendered_parameter(config, "max_sessions", int), idle, gauge=self.gauge)
        self._reaper, self._stop_reaper = reaper(self.table, min(idle, 5.0))

    def close(self) -> None:
        self._stop_reaper.set()
        self._reaper.join()
        self.table.close_all()
        self.gauge.close()
