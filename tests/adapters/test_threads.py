"""BoundedThreads: a ceiling on request threads, refusal (not a queue) beyond it, and a join on close."""

import threading

import pytest

from stepaudio.errors import Unavailable
from stepaudio_triton.threads import BoundedThreads


def test_a_request_beyond_the_ceiling_is_unavailable_and_a_freed_slot_is_reused():
    workers = BoundedThreads(2, "m")
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold():
        started.release()
        release.wait(10)

    workers.submit(hold)
    workers.submit(hold)
    assert started.acquire(timeout=5) and started.acquire(timeout=5)
    with pytest.raises(Unavailable, match="maximum of 2"):
        workers.submit(hold)
    release.set()
    ran = threading.Event()
    for _ in range(100):  # the holders free their slots as they return
        try:
            workers.submit(ran.set)
            break
        except Unavailable:
            threading.Event().wait(0.05)
    workers.close()
    assert ran.is_set()


def test_close_waits_for_running_work():
    workers = BoundedThreads(1, "m")
    done = []
    workers.submit(lambda: done.append(threading.Event().wait(0.2)))
    workers.close()
    assert done == [False]


def test_a_zero_ceiling_is_refused():
    with pytest.raises(ValueError):
        BoundedThreads(0, "m")
