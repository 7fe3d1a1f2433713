"""Stub supervision: find each model instance's python stub process, notice when one dies, reload its model.

Triton's python backend never restarts a dead stub (stepaudio_contract/compat.py: supervisor; the non-decoupled
restart was removed upstream in 24.06) and its readiness endpoints keep answering 200 while every request routed to that instance fails with
"Stub process '<instance>' is not healthy". The supervisor closes that gap from outside the server:

- every ``interval_s`` it lists the server's stub processes from ``/proc`` (a stub's argv carries its model file,
  shared-memory region and instance name);
- a known instance whose process is gone, exiting or a zombie marks its model *down* (the guard's readiness says so) and
  the model is reloaded through Triton's model-control API (explicit mode): new stubs start, the old version
  serves the requests already queued and is then unloaded;
- once the new stubs exist the model is up again.

Each dead model heals on a thread of its own (several heal at once, none waits for another's slow load), and a
reload that failed is retried with exponential backoff (``retry_base_s`` doubling up to ``retry_cap_s``), not at
every check.

It also remembers every shared-memory region a stub of this server used, so the launcher removes exactly those
(and never another server's) when it stops, however the server ended.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STUB_EXECUTABLE = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str
    shm_region: str
    exited: bool  # a zombie, or exiting (a killed stub with much memory takes a while to become one)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


PF_EXITING = 0x4  # /proc/<pid>/stat flags: the kernel is tearing the process down


def _stat_fields(stat: bytes) -> list[bytes]:
    """The fields after the command name, whose parentheses may hold spaces: state, ppid, ..., flags (index 6)."""
    return stat[stat.rfind(b")") + 2 :].split()


def _exited(fields: list[bytes]) -> bool:
    return fields[0] == b"Z" or bool(int(fields[6]) & PF_EXITING)


def _running(pid: int) -> bool:
    """The process exists, is not exiting and is not a zombie (an exited child of ours stays one until reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and not _exited(_stat_fields(stat))


def list_stubs(server_pid: int) -> list[Stub]:
    """The python stubs whose parent is ``server_pid``. Stub argv: exe, model file, shm region, shm sizes (2),
    parent pid, backend dir, IPC handle, instance name, ... (python_backend's stub launcher)."""
    stubs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        argv = (_read(f"/proc/{entry}/cmdline") or b"").split(b"\0")
        if stat is None:
            continue
        fields = _stat_fields(stat)
        if int(fields[1]) != server_pid:
            continue
        if len(argv) > 8 and argv[0].endswith(STUB_EXECUTABLE.encode()):
            model_file = Path(argv[1].decode(errors="replace"))
            stubs.append(Stub(int(entry), model_file.parent.parent.name, argv[8].decode(), argv[2].decode(),
                              _exited(fields)))
    return stubs


class StubSupervisor:
    """Watches one server's stubs on a thread; ``down()`` is the set of models being healed, with the reason."""

    def __init__(self, server_pid: int, reload_model: Callable[[str], None], interval_s: float = 0.5,
                 settle_timeout_s: float = 120.0, log: logging.Logger | None = None, retry_base_s: float = 1.0,
                 retry_cap_s: float = 60.0, max_concurrent_heals: int = 4,
                 clock: Callable[[], float] = time.monotonic):
        self.server_pid, self.reload_model = server_pid, reload_model
        self.log = log or logging.getLogger("stepaudio.supervisor")
        self.interval_s, self.settle_timeout_s = interval_s, settle_timeout_s
        self.retry_base_s, self.retry_cap_s, self.clock = retry_base_s, retry_cap_s, clock
        self._heals = concurrent.futures.ThreadPoolExecutor(max_concurrent_heals, thread_name_prefix="stub-heal")
        self._healing: set[str] = set()
        self._failures: dict[str, int] = {}  # model → reloads failed in a row
        self._retry_at: dict[str, float] = {}
        self.shm_regions: set[str] = set()
        self.restarts: dict[str, int] = {}
        self._instances: dict[str, dict[str, int]] = {}  # model → instance name → pid of its live stub
        self._retired: set[int] = set()  # pids of replaced stubs, whatever state they are in
        self._down: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def down(self) -> dict[str, str]:
        with self._lock:
            return dict(self._down)

    def start(self) -> StubSupervisor:
        self._baseline()
        self._thread = threading.Thread(target=self._run, name="stub-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._heals.shutdown(wait=False, cancel_futures=True)
        self.scan()  # last look: regions of stubs started since the previous poll

    def scan(self) -> list[Stub]:
        stubs = list_stubs(self.server_pid)
        self.shm_regions.update(s.shm_region for s in stubs if s.shm_region)
        return stubs

    def _baseline(self) -> None:
        for stub in self.scan():
            if not stub.exited:
                self._instances.setdefault(stub.model, {})[stub.instance] = stub.pid

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._check()
            except Exception:  # noqa: BLE001 - supervision must outlive any one failed check
                self.log.exception("stub supervision check failed")

    def _check(self) -> None:
        if not _running(self.server_pid):
            # Every stub dies with the server and nothing can be reloaded: say it once (the server's own log
            # above holds why it ended) instead of a reload failure per model on every check.
            self.log.error("tritonserver (pid %d) has exited; stub supervision stops", self.server_pid)
            self._stop.set()
            return
        alive = {s.pid for s in self.scan() if not s.exited}
        with self._lock:  # heal threads replace their model's instances meanwhile
            known = {model: dict(instances) for model, instances in self._instances.items()}
        dead = {model: sorted(name for name, pid in instances.items() if pid not in alive)
                for model, instances in known.items()}
        now = self.clock()
        with self._lock:  # every dead model reads as down before the first (slow) reload starts
            due = {model: names for model, names in dead.items()
                   if names and model not in self._healing and now >= self._retry_at.get(model, 0.0)}
            for model, names in due.items():
                if model not in self._down:
                    self._down[model] = f"stub of instance {', '.join(names)} died; reloading"
                self._healing.add(model)
        for model, names in due.items():
            self._heals.submit(self._heal, model, names)

    def _heal(self, model: str, dead: list[str]) -> None:
        try:
            self.log.error("model %s: stub of instance %s died; reloading", model, ", ".join(dead))
            with self._lock:
                old = set(self._instances[model].values())
            try:
                self.reload_model(model)
                self._await_new_stubs(model, old)
            except Exception as exc:  # noqa: BLE001 - stays down; retried after a backoff
                with self._lock:
                    failures = self._failures[model] = self._failures.get(model, 0) + 1
                    delay = min(self.retry_cap_s, self.retry_base_s * 2 ** (failures - 1))
                    self._retry_at[model] = self.clock() + delay
                    self._down[model] = f"reload failed: {exc}; retrying in {delay:.0f} s"
                self.log.error("model %s: reload failed (%d in a row): %s; retrying in %.0f s", model, failures,
                               exc, delay)
                return
            with self._lock:
                self.restarts[model] = self.restarts.get(model, 0) + 1
                self._failures.pop(model, None)
                self._retry_at.pop(model, None)
                self._down.pop(model, None)
                serving = len(self._instances[model])
            self.log.warning("model %s: reloaded, %d instance(s) serving", model, serving)
        finally:
            with self._lock:
                self._healing.discard(model)

    def _await_new_stubs(self, model: str, old: set[int]) -> None:
        with self._lock:
            self._retired |= old
            expected = set(self._instances[model])
        deadline = time.monotonic() + self.settle_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                retired = set(self._retired)
            fresh = {s.instance: s.pid for s in self.scan()
                     if s.model == model and not s.exited and s.pid not in retired}
            if expected <= set(fresh):
                with self._lock:
                    self._instances[model] = fresh
                return
            time.sleep(self.interval_s)
        raise TimeoutError(f"new stubs of {model} did not appear within {self.settle_timeout_s:.0f} s")
