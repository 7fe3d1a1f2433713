"""Request threads with a ceiling: a decoupled model serves each request on a worker thread so ``execute``
returns at once; the ceiling bounds threads (and the work queued behind them), and ``close`` joins them."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from stepaudio.errors import Unavailable
from stepaudio_triton.memory import idle_trim


class BoundedThreads:
    def __init__(self, limit: int, name: str):
        if limit < 1:
            raise ValueError(f"{name}: the thread limit must be ≥ 1, got {limit}")
        self.limit, self.name = limit, name
        self._pool = ThreadPoolExecutor(limit, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(limit)

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on a free thread; all busy → ``Unavailable`` (the client may retry), never a queue."""
        if not self._slots.acquire(blocking=False):
            raise Unavailable(f"{self.name} is serving its maximum of {self.limit} requests; retry later")

        def run():
            try:
                with idle_trim:
                    work()
            finally:
                self._slots.release()

        self._pool.submit(run)

    def close(self) -> None:
        """Wait for the running requests (their streams end when the engine or the called models stop)."""
        self._pool.shutdown(wait=True)  # accepted work runs to its end: a slot was free for it
