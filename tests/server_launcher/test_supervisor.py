"""The stub supervisor stops when the server itself has exited (nothing left to reload), and says so once."""

from __future__ import annotations

import logging
import subprocess
import time

from stepaudio_server.supervisor import StubSupervisor, _running


def test_an_exited_server_stops_supervision_without_reloads(caplog):
    server = subprocess.Popen(["sleep", "60"])
    reloads = []
    supervisor = StubSupervisor(server.pid, reloads.append)
    assert _running(server.pid)
    supervisor._check()
    assert not supervisor._stop.is_set()
    server.kill()
    try:
        deadline = time.monotonic() + 10
        while _running(server.pid) and time.monotonic() < deadline:  # the killed child becomes a zombie
            time.sleep(0.05)
        assert not _running(server.pid), "a zombie (exited, not yet reaped) counts as exited"
        with caplog.at_level(logging.ERROR):
            supervisor._check()
        assert supervisor._stop.is_set() and reloads == []
        assert sum("has exited" in r.getMessage() for r in caplog.records) >= 1
    finally:
        server.wait()
    assert not _running(server.pid)
