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

A model placed on a GPU (``model_facts.unload_before_reload``) heals the other way round: a load-first reload
needs the model's GPU memory twice, so it is unloaded first (``unload_model``, which returns once Triton reports
it unloaded), its old stubs are awaited gone, and only then loaded (``load_model``). It is down for that whole
outage ("healing: unloaded, reloading").

A stub's own child processes (vLLM's engine core and workers) are not Triton's: a SIGKILLed stub leaves them
running, holding their GPU memory. Every scan remembers each live stub's descendants (pid and start time, from the
/proc ppid chains; at most ``MAX_DESCENDANTS`` per stub); once a stub is gone, those still alive under the same
start time, and not now under a live stub, are SIGKILLed before its model is loaded again. A descendant started
after the last scan before the death is not known and not killed.

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
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STUB_EXECUTABLE = "triton_python_backend_stub"
MAX_DESCENDANTS = 64  # remembered per stub: bounds one scan's work (vLLM TP 8: engine core + 8 workers + helpers)
MAX_ANCESTRY = 64  # ppid links followed to see whether a leftover now lives under a live stub
KILL_WAIT_S = 10.0  # for a SIGKILLed leftover to finish exiting before the load goes on


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str
    shm_region: str
    exited: bool  # a zombie, or exiting (a killed stub with much memory takes a while to become one)
    start: int = 0  # /proc/<pid>/stat starttime: with the pid it names one process, whatever reuses the pid later


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot when it started (stat field 22)
    exited: bool
    name: str


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


def _proc(pid: int, stat: bytes) -> Proc:
    fields = _stat_fields(stat)
    name = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode(errors="replace")
    return Proc(pid, int(fields[1]), int(fields[19]), _exited(fields), name)


def process_table() -> dict[int, Proc]:
    """Every process in /proc (one stat read each): the ppid chains and start times."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read(f"/proc/{entry}/stat")) is not None:
            table[int(entry)] = _proc(int(entry), stat)
    return table


def _alive_as(pid: int, start: int) -> bool:
    """``pid`` is still the process that started at ``start`` and is not a zombie yet (it may be exiting)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and _stat_fields(stat)[0] != b"Z" and _proc(pid, stat).start == start


def kill_if_same(pid: int, start: int) -> bool:
    """SIGKILL ``pid`` only while it is still the process that started at ``start``; True if signalled.

    A pidfd pins the process before its start time is read, so a pid reused in between is not hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # kernels before 5.3: the start-time check alone (a pid reused within it is hit)
        pidfd = None
    try:
        stat = _read(f"/proc/{pid}/stat")
        if stat is None or _proc(pid, stat).start != start:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _running(pid: int) -> bool:
    """The process exists, is not exiting and is not a zombie (an exited child of ours stays one until reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and not _exited(_stat_fields(stat))


def list_stubs(server_pid: int, table: dict[int, Proc] | None = None) -> list[Stub]:
    """The python stubs whose parent is ``server_pid`` (in ``table``, read now if not given). Stub argv: exe,
    model file, shm region, shm sizes (2), parent pid, backend dir, IPC handle, instance name, ... (python_backend's
    stub launcher)."""
    stubs = []
    for proc in (table if table is not None else process_table()).values():
        if proc.ppid != server_pid:
            continue
        argv = (_read(f"/proc/{proc.pid}/cmdline") or b"").split(b"\0")
        if len(argv) > 8 and argv[0].endswith(STUB_EXECUTABLE.encode()):
            model_file = Path(argv[1].decode(errors="replace"))
            stubs.append(Stub(proc.pid, model_file.parent.parent.name, argv[8].decode(), argv[2].decode(),
                              proc.exited, proc.start))
    return stubs


@dataclass
class _Tracked:
    """A stub this supervisor saw alive, and the descendants it had (pid → start time)."""

    model: str
    instance: str
    descendants: dict[int, int]


class StubSupervisor:
    """Watches one server's stubs on a thread; ``down()`` is the set of models being healed, with the reason.

    ``reload_model(m)`` is the load-first heal. ``unload_model(m)`` (returns once ``m`` is unloaded) and
    ``load_model(m)`` make the unload-first heal, taken for the models ``unload_first(m)`` names."""

    def __init__(self, server_pid: int, reload_model: Callable[[str], None], interval_s: float = 0.5,
                 settle_timeout_s: float = 120.0, log: logging.Logger | None = None, retry_base_s: float = 1.0,
                 retry_cap_s: float = 60.0, max_concurrent_heals: int = 4,
                 clock: Callable[[], float] = time.monotonic,
                 unload_model: Callable[[str], None] | None = None, load_model: Callable[[str], None] | None = None,
                 unload_first: Callable[[str], bool] = lambda model: False):
        if (unload_model is None) != (load_model is None):
            raise ValueError("the unload-first heal needs both unload_model and load_model")
        self.server_pid, self.reload_model = server_pid, reload_model
        self.unload_model, self.load_model, self.unload_first = unload_model, load_model, unload_first
        self.log = log or logging.getLogger("stepaudio.supervisor")
        self.interval_s, self.settle_timeout_s = interval_s, settle_timeout_s
        self.retry_base_s, self.retry_cap_s, self.clock = retry_base_s, retry_cap_s, clock
        self._heals = concurrent.futures.ThreadPoolExecutor(max_concurrent_heals, thread_name_prefix="stub-heal")
        self._healing: set[str] = set()
        self._failures: dict[str, int] = {}  # model → heals failed in a row
        self._retry_at: dict[str, float] = {}
        self.shm_regions: set[str] = set()
        self.restarts: dict[str, int] = {}
        self.killed: list[tuple[int, str, str]] = []  # leftovers SIGKILLed: pid, process name, model
        self._instances: dict[str, dict[str, int]] = {}  # model → instance name → pid of its live stub
        self._retired: set[int] = set()  # pids of replaced stubs, whatever state they are in
        self._down: dict[str, str] = {}
        self._lock = threading.Lock()
        # Guards _tracked: scans on heal threads and on the supervisor thread both update it.
        self._procs_lock = threading.Lock()
        self._tracked: dict[tuple[int, int], _Tracked] = {}  # (stub pid, start time) → what it had
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

    def scan(self, table: dict[int, Proc] | None = None) -> list[Stub]:
        table = table if table is not None else process_table()
        stubs = list_stubs(self.server_pid, table)
        self.shm_regions.update(s.shm_region for s in stubs if s.shm_region)
        self._track(stubs, table)
        return stubs

    def _track(self, stubs: list[Stub], table: dict[int, Proc]) -> None:
        """Remember each live stub's descendants (at most MAX_DESCENDANTS each), forgetting those that ended."""
        children: dict[int, list[int]] = {}
        for proc in table.values():
            children.setdefault(proc.ppid, []).append(proc.pid)
        with self._procs_lock:
            for stub in stubs:
                if stub.exited:
                    continue
                tracked = self._tracked.setdefault((stub.pid, stub.start), _Tracked(stub.model, stub.instance, {}))
                known = tracked.descendants
                for pid, start in list(known.items()):
                    if (proc := table.get(pid)) is None or proc.start != start:
                        del known[pid]  # ended; its pid may name another process now
                frontier, seen = list(children.get(stub.pid, ())), set()
                while frontier and len(known) < MAX_DESCENDANTS:
                    pid = frontier.pop()
                    if pid not in seen:
                        seen.add(pid)
                        known[pid] = table[pid].start
                        frontier.extend(children.get(pid, ()))

    def _reap(self, table: dict[int, Proc] | None = None, live: set[int] | None = None) -> int:
        """SIGKILL what the stubs gone since they were tracked left running: their remembered descendants still
        alive with the same start time and not now under a live stub of this server (``live``: the pids of the
        stubs the caller's scan of ``table`` found running). Returns how many."""
        if table is None:
            table = process_table()
        if live is None:
            live = {stub.pid for stub in list_stubs(self.server_pid, table) if not stub.exited}
        killed: dict[int, int] = {}
        with self._procs_lock:
            gone = [key for key in self._tracked
                    if (proc := table.get(key[0])) is None or proc.start != key[1] or proc.exited]
            for key in gone:
                tracked = self._tracked.pop(key)
                for pid, start in tracked.descendants.items():
                    proc = table.get(pid)
                    if proc is None or proc.start != start or self._under(proc, live, table):
                        continue
                    if kill_if_same(pid, start):
                        killed[pid] = start
                        self.killed.append((pid, proc.name, tracked.model))
                        self.log.warning("model %s: killed pid %d (%s), left running by the dead stub %d of "
                                         "instance %s", tracked.model, pid, proc.name, key[0], tracked.instance)
        self._await_dead(killed)
        return len(killed)

    def _await_dead(self, processes: dict[int, int]) -> None:
        """Until the killed processes are zombies or gone: SIGKILL only asks, and a process frees its (GPU) memory
        while it exits, which on a busy machine can start after the next load would."""
        deadline = time.monotonic() + KILL_WAIT_S
        while processes and time.monotonic() < deadline:
            processes = {pid: start for pid, start in processes.items() if _alive_as(pid, start)}
            if processes:
                time.sleep(0.02)
        for pid in processes:
            self.log.error("pid %d still exits %.0f s after SIGKILL; loading anyway", pid, KILL_WAIT_S)

    @staticmethod
    def _under(proc: Proc, live: set[int], table: dict[int, Proc]) -> bool:
        """Whether a live stub is among ``proc``'s ancestors (it was reparented to one: that stub's now)."""
        for _ in range(MAX_ANCESTRY):
            if proc.ppid in live:
                return True
            if (parent := table.get(proc.ppid)) is None:
                return False
            proc = parent
        return False

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

    def _unloads_first(self, model: str) -> bool:
        if self.unload_model is None:
            return False
        try:
            return bool(self.unload_first(model))
        except Exception:  # noqa: BLE001 - an unknown model heals as before
            self.log.exception("model %s: cannot tell its placement; reloading load-first", model)
            return False

    def _check(self) -> None:
        if not _running(self.server_pid):
            # Every stub dies with the server and nothing can be reloaded: say it once (the server's own log
            # above holds why it ended) instead of a reload failure per model on every check.
            self.log.error("tritonserver (pid %d) has exited; stub supervision stops", self.server_pid)
            self._stop.set()
            return
        table = process_table()
        alive = {s.pid for s in self.scan(table) if not s.exited}
        self._reap(table, alive)  # a dead stub's leftovers go before any heal of its model loads it again
        with self._lock:  # heal threads replace their model's instances meanwhile
            known = {model: dict(instances) for model, instances in self._instances.items()}
        dead = {model: sorted(name for name, pid in instances.items() if pid not in alive)
                for model, instances in known.items()}
        now = self.clock()
        with self._lock:
            due = {model: names for model, names in dead.items()
                   if names and model not in self._healing and now >= self._retry_at.get(model, 0.0)}
        unload_first = {model: self._unloads_first(model) for model in due}
        with self._lock:  # every dead model reads as down before the first (slow) reload starts
            for model, names in due.items():
                if model not in self._down:
                    how = "unloading, then loading (GPU)" if unload_first[model] else "reloading"
                    self._down[model] = f"stub of instance {', '.join(names)} died; {how}"
                self._healing.add(model)
        for model, names in due.items():
            self._heals.submit(self._heal, model, names, unload_first[model])

    def _heal(self, model: str, dead: list[str], unload_first: bool = False) -> None:
        try:
            self.log.error("model %s: stub of instance %s died; %s", model, ", ".join(dead),
                           "unloading it, then loading it (on a GPU it does not fit twice)" if unload_first
                           else "reloading")
            with self._lock:
                old = set(self._instances[model].values())
            step = "reload"
            try:
                if unload_first:
                    step = "unload"
                    self.unload_model(model)
                    self._await_gone(model, old)
                    self._reap()  # what the unload's stubs left (the dead ones' went at the check)
                    with self._lock:
                        self._down[model] = "healing: unloaded, reloading"
                    step = "load"
                    self.load_model(model)
                else:
                    self.reload_model(model)
                self._await_new_stubs(model, old)
            except Exception as exc:  # noqa: BLE001 - stays down; retried after a backoff
                with self._lock:
                    failures = self._failures[model] = self._failures.get(model, 0) + 1
                    delay = min(self.retry_cap_s, self.retry_base_s * 2 ** (failures - 1))
                    self._retry_at[model] = self.clock() + delay
                    self._down[model] = f"{step} failed: {exc}; retrying in {delay:.0f} s"
                self.log.error("model %s: %s failed (%d in a row): %s; retrying in %.0f s", model, step, failures,
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

    def _await_gone(self, model: str, old: set[int]) -> None:
        """Until none of the model's old stubs runs (Triton reports a model unloaded before its stubs have
        exited and freed their GPU memory)."""
        deadline = time.monotonic() + self.settle_timeout_s
        while time.monotonic() < deadline:
            if not old & {s.pid for s in self.scan() if not s.exited}:
                return
            time.sleep(self.interval_s)
        raise TimeoutError(f"old stubs of {model} still run {self.settle_timeout_s:.0f} s after its unload")

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
