"""The stub supervisor: it stops when the server itself has exited (nothing left to reload) and says so once; a
failed reload backs off; dead models heal concurrently (stubs faked); a GPU model heals unload first, down all along;
a dead stub's leftover processes are killed before its model loads again (real processes), a reused pid never."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from stepaudio_server import supervisor
from stepaudio_server.model_facts import ModelFacts, unload_before_reload
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

    def list(self, _pid: int, _table=None) -> list[supervisor.Stub]:
        with self.lock:
            return list(self.stubs)


@pytest.fixture
def fake(monkeypatch):
    server = FakeServer({"tts_llm": 1, "tts": 1})  # the slow one first: healing in turn would block tts
    monkeypatch.setattr(supervisor, "list_stubs", server.list)
    monkeypatch.setattr(supervisor, "_running", lambda pid: True)
    # Fake pids may be real processes here: the descendant tracking sees no process table at all.
    monkeypatch.setattr(supervisor, "process_table", dict)
    return server


def _settle(watched: StubSupervisor) -> None:
    deadline = time.monotonic() + 10
    while watched._healing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watched._healing


def _attempt_gaps(watched, now: list[float], attempts: list[float]) -> list[float]:
    """20 s of checks every 0.1 s of the fake clock ``now``; the gaps between the heal attempts recorded."""
    for step in range(200):
        now[0] = step * 0.1
        watched._check()
        _settle(watched)
    return [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]


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
    # Retries after 1, 2, 4, 4, 4 ... s, not at every check (the old supervisor: 200 attempts).
    gaps = _attempt_gaps(watched, now, attempts)
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


class StepServer(FakeServer):
    """A fake server whose ``tts_llm`` has two instances (one dies, the unload stops the other)."""

    def kill_one(self, model: str) -> None:
        with self.lock:
            self.stubs.remove(next(s for s in self.stubs if s.model == model))

    def respawn_all(self, model: str, count: int) -> None:
        with self.lock:
            self._start(model, count)


@pytest.fixture
def stepped(monkeypatch):
    server = StepServer({"tts_llm": 2, "tts": 1})
    monkeypatch.setattr(supervisor, "list_stubs", server.list)
    monkeypatch.setattr(supervisor, "_running", lambda pid: True)
    monkeypatch.setattr(supervisor, "process_table", dict)
    return server


def _stepped_supervisor(server: StepServer, events: list, **kwargs) -> StubSupervisor:
    watched: StubSupervisor

    def unload(model):
        events.append(("unload", model, watched.down().get(model)))
        # Triton reports the model unloaded before its last stub has exited: the heal must wait for it.
        threading.Timer(0.2, server.kill, (model,)).start()

    def load(model):
        still = [s.pid for s in server.list(0) if s.model == model]
        events.append(("load", model, watched.down().get(model), still))
        server.respawn_all(model, 2)

    def reload(model):
        events.append(("reload", model, watched.down().get(model)))
        server.respawn_all(model, 1)

    watched = StubSupervisor(1, reload, settle_timeout_s=5, interval_s=0.01, unload_model=unload, load_model=load,
                             unload_first=lambda model: model == "tts_llm", **kwargs)
    return watched


def test_a_gpu_model_heals_unload_then_load_and_reads_down_all_along(stepped):
    events: list = []
    watched = _stepped_supervisor(stepped, events)
    watched._baseline()
    stepped.kill_one("tts_llm")
    watched._check()
    assert "died; unloading, then loading" in watched.down()["tts_llm"]
    _settle(watched)
    assert [event[:2] for event in events] == [("unload", "tts_llm"), ("load", "tts_llm")]
    assert "unloading" in events[0][2]
    assert events[1][2] == "healing: unloaded, reloading"
    assert events[1][3] == [], "loaded while a stub of the unloaded version still ran"
    assert watched.down() == {} and watched.restarts == {"tts_llm": 1}


def test_a_cpu_model_still_heals_load_first(stepped):
    events: list = []
    watched = _stepped_supervisor(stepped, events)
    watched._baseline()
    stepped.kill("tts")
    watched._check()
    _settle(watched)
    assert [event[:2] for event in events] == [("reload", "tts")]
    assert "died; reloading" in events[0][2]
    assert watched.down() == {} and watched.restarts == {"tts": 1}


def test_a_failing_unload_is_retried_with_the_backoff(stepped):
    now = [0.0]
    attempts: list[float] = []

    def unload(model):
        attempts.append(now[0])
        raise RuntimeError("unload refused")

    def load(model):
        raise AssertionError("loaded although the unload failed")

    watched = StubSupervisor(1, lambda model: None, settle_timeout_s=0.2, interval_s=0.01, retry_base_s=1.0,
                             retry_cap_s=4.0, clock=lambda: now[0], unload_model=unload, load_model=load,
                             unload_first=lambda model: True)
    watched._baseline()
    stepped.kill_one("tts_llm")
    gaps = _attempt_gaps(watched, now, attempts)
    assert gaps[:3] == [1.0, 2.0, 4.0] and set(gaps[3:]) == {4.0}, gaps
    assert watched.down()["tts_llm"].startswith("unload failed: unload refused; retrying in 4 s")
    assert watched.restarts == {}


def test_the_heal_order_comes_from_the_loaded_config():
    gpu = {"name": "tts_llm", "backend": "python", "instance_group": [{"name": "g", "kind": "KIND_GPU", "count": 1}]}
    cpu = {"name": "tts_llm", "backend": "python", "instance_group": [{"name": "c", "kind": "KIND_CPU", "count": 1}]}
    vllm = {"name": "chat_llm", "backend": "python", "instance_group": [{"kind": "KIND_MODEL", "count": 1}],
            "parameters": {"engine": {"string_value": "vllm"}}}
    native_cpu = dict(cpu, parameters={"engine": {"string_value": "native"}})
    ensemble = {"name": "ensemble_tts", "platform": "ensemble",
                "ensemble_scheduling": {"step": [{"model_name": "tts_frontend"}, {"model_name": "tts_llm"},
                                                 {"model_name": "tts_frontend"}]}}
    assert [unload_before_reload(c) for c in (gpu, cpu, vllm, native_cpu, ensemble)] == [True, False, True, False,
                                                                                          False]
    assert ModelFacts.from_config(gpu).unload_first and not ModelFacts.from_config(cpu).unload_first
    assert ModelFacts.from_config(ensemble).composing == ("tts_frontend", "tts_llm")


# A fake stub: argv[0] names the stub executable (what list_stubs looks for), argv[1] is this file (the "model
# file"), argv[8] the instance. It starts an "engine" child that starts a grandchild, and a second child; it
# writes their pids to the file after the instance name, then sleeps.
FAKE_STUB = """
import os, subprocess, sys, time
pid_file, bare = sys.argv[8], sys.argv[9] == "bare"
python = os.readlink("/proc/self/exe")  # sys.executable follows argv[0], the stub's name here
sleeper = [python, "-c", "import time; time.sleep(60)"]
engine = ("import subprocess, sys, time; p = subprocess.Popen(sys.argv[2:]); "
          "open(sys.argv[1], 'a').write(f'grandchild {p.pid}\\\\n'); time.sleep(60)")
if not bare:
    child = subprocess.Popen([python, "-c", engine, pid_file, *sleeper])
    other = subprocess.Popen(sleeper)
    with open(pid_file, "a") as f:
        f.write(f"child {child.pid}\\nother {other.pid}\\n")
time.sleep(60)
"""


def _start_fake_stub(model_file, pid_file, bare: bool) -> subprocess.Popen:
    argv = [f"/opt/tritonserver/backends/python/{supervisor.STUB_EXECUTABLE}", str(model_file), "region_fake", "0",
            "0", str(os.getpid()), "/backends", "ipc", "fake_model_0_0", str(pid_file), "bare" if bare else "tree"]
    return subprocess.Popen(argv, executable=sys.executable)


def _wait(predicate, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[19])


def test_a_dead_stubs_leftover_processes_are_killed_and_a_reused_pid_never(tmp_path, caplog):
    model_file = tmp_path / "fake_model" / "1" / "model.py"
    model_file.parent.mkdir(parents=True)
    model_file.write_text(FAKE_STUB)
    pid_file = tmp_path / "pids"
    stub = _start_fake_stub(model_file, pid_file, bare=False)
    started = [stub]
    pids: dict[str, int] = {}
    try:
        def all_pids():
            lines = pid_file.read_text().split() if pid_file.exists() else []
            pids.update(zip(lines[::2], map(int, lines[1::2])))
            return len(pids) == 3

        _wait(all_pids, "the fake stub did not start its process tree")
        starts = {name: _start_time(pid) for name, pid in pids.items()}
        alive_at_load: list[dict[str, bool]] = []

        def reload(model):
            alive_at_load.append({name: supervisor._running(pid) for name, pid in pids.items()})
            started.append(_start_fake_stub(model_file, tmp_path / "pids2", bare=True))

        watched = StubSupervisor(os.getpid(), reload, settle_timeout_s=20, interval_s=0.05)
        watched._baseline()
        tracked = watched._tracked[(stub.pid, _start_time(stub.pid))]
        assert tracked.descendants == {pid: starts[name] for name, pid in pids.items()}
        # 'other' stands for a pid reused since: the remembered start time is not its process's.
        tracked.descendants[pids["other"]] = starts["other"] - 1
        stub.kill()  # SIGKILL: the children are reparented, still running
        _wait(lambda: not supervisor._running(stub.pid), "the killed stub did not exit")
        assert supervisor._running(pids["grandchild"])
        with caplog.at_level(logging.WARNING):
            watched._check()
            _settle(watched)
        assert alive_at_load == [{"child": False, "grandchild": False, "other": True}]
        assert sorted(pid for pid, _name, _model in watched.killed) == sorted([pids["child"], pids["grandchild"]])
        assert sum(f"killed pid {pids['grandchild']}" in r.getMessage() for r in caplog.records) == 1
        assert supervisor._running(pids["other"]), "a process whose start time differs was killed"
        assert watched.restarts == {"fake_model": 1} and watched.down() == {}
    finally:
        for name, pid in pids.items():  # ours; killed only while the pid still names the process we started
            if _start_time(pid) == starts.get(name) and _start_time(pid) is not None:
                os.kill(pid, signal.SIGKILL)
        for process in started:
            process.kill()
            process.wait()


class FakeTriton:
    """Triton's HTTP answers to the unload-first heal: the unload returns at once and the model reads UNLOADING
    for two index polls; the ensemble built on it goes down with it and, here, does not come back by itself."""

    def __init__(self):
        self.state = {"tts_llm": "READY", "ensemble_tts": "READY", "tts": "READY"}
        self.configs = {"tts_llm": {"name": "tts_llm", "instance_group": [{"kind": "KIND_GPU", "count": 1}]},
                        "ensemble_tts": {"name": "ensemble_tts", "platform": "ensemble",
                                         "ensemble_scheduling": {"step": [{"model_name": "tts_llm"}]}},
                        "tts": {"name": "tts", "instance_group": [{"kind": "KIND_CPU", "count": 1}]}}
        self.calls: list[tuple[str, str, dict]] = []
        self.unloading_polls = 0

    def __call__(self, path, method="GET", body=None, timeout=5):
        parts = path.strip("/").split("/")
        sent = json.loads(body) if body else {}
        if path == "/v2/repository/index":
            if self.unloading_polls:
                self.unloading_polls -= 1
                if self.unloading_polls == 0:
                    self.state["tts_llm"] = "UNAVAILABLE"
            return 200, json.dumps([{"name": m, "version": "1", "state": s} for m, s in self.state.items()]).encode()
        model, action = parts[-2], parts[-1]
        self.calls.append((action, model, sent))
        if action in ("config", "ready"):
            ready = self.state[parts[2]] == "READY"
            answer = json.dumps(self.configs[parts[2]]).encode() if action == "config" else b""
            return (200, answer) if ready else (400, b'{"error": "unavailable"}')
        if action == "unload":
            self.state[model], self.state["ensemble_tts"], self.unloading_polls = "UNLOADING", "UNAVAILABLE", 2
        elif action == "load":
            self.state[model] = "READY"
        return 200, b""


def test_the_launchers_unload_waits_for_unloaded_and_its_load_brings_the_ensemble_back(tmp_path):
    from stepaudio_server.launcher import TritonServer

    triton = FakeTriton()
    server = TritonServer(tmp_path)
    server._get = triton
    server.model_facts = {name: ModelFacts.from_config(config) for name, config in triton.configs.items()}
    assert server._unloads_first("tts_llm") and not server._unloads_first("tts")
    server.unload_model("tts_llm")
    assert triton.state["tts_llm"] == "UNAVAILABLE", "returned before Triton reported the model unloaded"
    unloads = [call for call in triton.calls if call[0] == "unload"]
    assert unloads == [("unload", "tts_llm", {"parameters": {"unload_dependents": False}})]
    triton.calls.clear()
    server.load_model("tts_llm")
    loads = [(model, json.loads(sent["parameters"]["config"])) for action, model, sent in triton.calls
             if action == "load"]
    assert [model for model, _config in loads] == ["tts_llm", "ensemble_tts"]
    assert loads[0][1]["instance_group"] == triton.configs["tts_llm"]["instance_group"]  # the config it served
    assert loads[1][1]["ensemble_scheduling"] == triton.configs["ensemble_tts"]["ensemble_scheduling"]
    assert "stepaudio_reload" in loads[1][1]["parameters"], "an unchanged override could be taken for a no-op"
    assert triton.state == {"tts_llm": "READY", "ensemble_tts": "READY", "tts": "READY"}
