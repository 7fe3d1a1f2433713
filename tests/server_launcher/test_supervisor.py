"""The stub supervisor: it stops when the server itself has exited (nothing left to reload) and says so once; a
failed reload backs off; dead models heal concurrently (stubs faked)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time

import pytest

from stepaudio_server import supervisor
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


class FakeServer:
    """The stubs a server would have: ``kill`` ends one, ``reload`` (the model-control call) starts new ones."""

    def __init__(self, models: dict[str, int]):
        self.lock = threading.Lock()
        self.next_pid = 1000
        self.stubs: list[supervisor.Stub] = []
        for model, count in models.items():
            self._start(model, count)

    def _start(self, model: str, count: int) -> None:
        for i in range(count):
            self.next_pid += 1
            self.stubs.append(supervisor.Stub(self.next_pid, model, f"{model}_0_{i}", f"region{self.next_pid}", False))

    def kill(self, model: str) -> None:
        with self.lock:
            self.stubs = [s for s in self.stubs if s.model != model]

    def respawn(self, model: str) -> None:
        with self.lock:
            self._start(model, 1)

    def list(self, _pid: int) -> list[supervisor.Stub]:
        with self.lock:
            return list(self.stubs)


@pytest.fixture
def fake(monkeypatch):
    server = FakeServer({"tts_llm": 1, "tts": 1})  # the slow one first: healing in turn would block tts
    monkeypatch.setattr(supervisor, "list_stubs", server.list)
    monkeypatch.setattr(supervisor, "_running", lambda pid: True)
    return server


def _settle(watched: StubSupervisor) -> None:
    deadline = time.monotonic() + 10
    while watched._healing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watched._healing


def test_a_failing_reload_backs_off_exponentially_up_to_the_cap(fake):
    now = [0.0]
    attempts: list[float] = []

    def reload(model):
        attempts.append(now[0])
        raise RuntimeError("load failed")

    watched = StubSupervisor(1, reload, settle_timeout_s=0.2, interval_s=0.01, retry_base_s=1.0, retry_cap_s=4.0,
                             clock=lambda: now[0])
    watched._baseline()
    fake.kill("tts")
    for step in range(200):  # 20 s of checks every 0.1 s of the fake clock
        now[0] = step * 0.1
        watched._check()
        _settle(watched)
    # Retries after 1, 2, 4, 4, 4 ... s, not at every check (the old supervisor: 200 attempts).
    gaps = [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]
    assert gaps[:3] == [1.0, 2.0, 4.0] and set(gaps[3:]) == {4.0}, gaps
    assert "retrying in 4 s" in watched.down()["tts"]
    assert "tts_llm" not in watched.down()


def test_dead_models_heal_concurrently(fake):
    slow_started, release = threading.Event(), threading.Event()
    healed = []

    def reload(model):
        if model == "tts_llm":  # a slow load (a large model) ...
            slow_started.set()
            assert release.wait(10)
        fake.respawn(model)
        healed.append(model)

    watched = StubSupervisor(1, reload, settle_timeout_s=5, interval_s=0.01)
    watched._baseline()
    fake.kill("tts_llm")
    fake.kill("tts")
    watched._check()
    try:
        assert slow_started.wait(10)
        deadline = time.monotonic() + 10
        while "tts" not in healed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert healed == ["tts"], "tts waited for tts_llm's reload"
        assert set(watched.down()) == {"tts_llm"}
    finally:
        release.set()
    _settle(watched)
    assert healed == ["tts", "tts_llm"] and watched.down() == {}
    assert watched.restarts == {"tts": 1, "tts_llm": 1}
