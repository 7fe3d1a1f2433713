"""Give freed heap back to the operating system when a stub goes idle.

glibc keeps memory that Python, numpy and torch free inside its arenas; a stub that served a burst of requests
stays at the burst's size. When the last request in flight ends (and at most every ``min_interval_s``), the stub
calls glibc's ``malloc_trim(0)``, which returns the free pages of every arena. Not available (another C library):
nothing happens."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class IdleTrim:
    """``with idle_trim:`` around each request's work."""

    def __init__(self, min_interval_s: float = 5.0):
        self.min_interval_s = min_interval_s
        self.trims = 0
        self._trim = _malloc_trim()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last = float("-inf")  # monotonic time starts near boot: the first idle moment trims

    def __enter__(self) -> "IdleTrim":
        with self._lock:
            self._in_flight += 1
        return self

    def __exit__(self, *exc_info) -> None:
        now = time.monotonic()
        with self._lock:
            self._in_flight -= 1
            due = self._in_flight == 0 and now - self._last >= self.min_interval_s and self._trim is not None
            if due:
                self._last = now
        if due:
            self._trim(0)
            self.trims += 1


idle_trim = IdleTrim()  # one per stub process: the heap is the process's
