"""Launch a real Triton Inference Server on a model repository.

``python -m stepaudio_server --model-repository DIR`` (or ``make serve``) starts ``tritonserver``, waits until
``/v2/health/ready`` answers, prints the HTTP/gRPC/metrics URLs and stops cleanly on Ctrl-C/SIGTERM.

Where the server comes from:
- a system ``tritonserver`` on PATH (an NGC Triton container): used as is, with its own backends;
- otherwise the Triton build inside the ``nvidia-pytriton`` wheel (its version:
  ``stepaudio_contract.compat.PYTRITON_SERVER``), set up exactly as
  ``docs/triton-on-cpu.md#launch-recipe`` measured: a backend directory of our own with *copies* of
  ``libtriton_python.so``, the stub and ``triton_python_backend_utils.py``; the venv's ``bin`` first on PATH (the
  stub finds the venv through ``python3``); ``LD_LIBRARY_PATH`` = Python's LIBDIR + the wheel's ``nvidia_pytriton.libs``.

The project's python-based backends (``backends/<name>/model.py``, e.g. the CPU ``onnxruntime`` backend; an
installed wheel carries them, see ``stepaudio_server.files``) are copied next to the python backend, so ONNX
models whose GPU config names the native ORT backend load on this CPU build through ``configs/cpu.pbtxt``. With no
GPU present the launcher passes ``--model-config-name=cpu``.

The library never imports Triton: this module only starts a process and speaks HTTP with urllib.
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stepaudio_server.files import backends_dir
from stepaudio_server.http_guard import ADMIN_HEADER, GuardLimits, HttpGuard
from stepaudio_server.model_facts import ModelFacts
from stepaudio_server.supervisor import StubSupervisor

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Every python-based backend names its stubs' regions triton_<backend>_backend_shm_region_<uuid>.
_SHM_GLOB = "/dev/shm/triton_*_backend_shm_region_*"
_LOADED_MODEL = re.compile(r"successfully loaded '([^']+)'")  # Triton's log line as each model becomes ready
# Lines of a server log that say why the process ended (Triton's signal handler, an uncaught C++ exception, a
# stub's faulthandler): what an exit report quotes, since the last lines are the stubs' own exit noise.
_CRASH_LINE = re.compile(r"Signal \(\d+\) received|terminate called|what\(\):|Fatal Python error|Aborted|"
                         r"Segmentation fault|std::bad_alloc|\*\*\* |out of memory|Killed")
# Triton's restricted-API header (ADMIN_HEADER): these endpoint groups answer only requests that carry it.
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # how gRPC clients must spell a restricted-protocol header
LOOPBACK = "127.0.0.1"
log = logging.getLogger("stepaudio_server")


class ServerError(RuntimeError):
    """The server did not become ready."""


class ModelLoadError(ServerError):
    """One or more models failed to load; ``failures`` maps model name → Triton's error text."""

    def __init__(self, failures: dict[str, str], log_tail: str = ""):
        self.failures = failures
        lines = [f"model {name!r} failed to load: {reason}" for name, reason in sorted(failures.items())]
        super().__init__("\n".join(lines) + (f"\n--- server log tail ---\n{log_tail}" if log_tail else ""))


def _die_with_parent() -> None:
    """Runs in the server process before exec: SIGTERM it when the process that started it dies (Linux), so a
    killed test run or launcher never leaves a server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def write_private(path: Path, secret: str) -> Path:
    """A file only its owner can read (created 0600, never readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def read_admin_key_file(path: Path) -> str:
    """The operator's admin key from a file that only its owner may read (like ssh's private keys)."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise ServerError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    key = path.read_text().strip()
    if len(key) < 16:
        raise ServerError(f"the admin key in {path} is shorter than 16 characters")
    return key


def describe_exit(returncode: int) -> str:
    """``code 1`` or ``signal SIGSEGV`` (Popen's negative return codes)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"code {returncode}"
        # A SIGKILL leaves no line in the server's log: the OOM killer's are in the kernel log and the cgroup's count.
        return f"signal {name}" + (" (the kernel's OOM killer, or another process)" if name == "SIGKILL" else "")
    return f"code {returncode}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def gpu_present() -> bool:
    """True when an NVIDIA driver answers (no torch import: the launcher stays light)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def _wheel_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


@dataclass
class ServerBinary:
    """A tritonserver executable with the environment and backend directory it needs."""

    executable: Path
    env: dict[str, str]
    backend_directory: Path | None
    cache_directory: Path | None


def _prepare_wheel_server(workdir: Path) -> ServerBinary:
    wheel = _wheel_root()
    if wheel is None:
        raise ServerError("no tritonserver on PATH and the nvidia-pytriton wheel is not installed (pip install -e .)")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"the pytriton wheel has no python backend stub for Python {version}")
    backend_dir = workdir / "backends"
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    # Copies, not symlinks: a symlinked libtriton_python.so makes python-based backends fail to load.
    for src in (wheel / "backends/python/libtriton_python.so", wheel / "backends/python/triton_python_backend_utils.py", stub):
        shutil.copy2(src, python_dir / src.name)
    for backend in sorted(backends_dir().glob("*/model.py")):
        target = backend_dir / backend.parent.name
        target.mkdir(exist_ok=True)
        shutil.copy2(backend, target / "model.py")

    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(wheel.parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    return ServerBinary(wheel / "bin" / "tritonserver", env, backend_dir, wheel / "caches")


def locate_server(workdir: Path, prefer_system: bool = True) -> ServerBinary:
    system = shutil.which("tritonserver") if prefer_system else None
    if system:
        return ServerBinary(Path(system), dict(os.environ), None, None)
    return _prepare_wheel_server(workdir)


def unrendered_configs(repository: Path) -> list[Path]:
    """Configs with unfilled ``${...}`` placeholders: the ``model_repository/`` templates, which
    ``export.render_repository`` fills; served as they are, every model would fail with a config parse error."""
    return [config for config in sorted(Path(repository).glob("*/config.pbtxt")) if "${" in config.read_text()]


class _LoadCounter:
    """Models loaded so far, from the lines Triton appends to its log (at startup Triton loads every model before
    its HTTP/gRPC endpoints answer, so the API cannot tell); each call reads only what is new."""

    def __init__(self, log_path: Path, repository: Path, offset: int = 0):
        self.log_path, self.offset, self.loaded = Path(log_path), offset, set()
        self.total = len(list(Path(repository).glob("*/config.pbtxt")))

    def __call__(self) -> tuple[int, int]:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.offset)
                new = log.read()
        except OSError:
            return len(self.loaded), self.total
        complete = new.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += complete
        self.loaded.update(_LOADED_MODEL.findall(new[:complete].decode(errors="replace")))
        return len(self.loaded), self.total


class LoadProgress:
    """Whether loading has stalled: ``stall_s`` seconds since the last model finished loading (or since start)."""

    def __init__(self, counter: Callable[[], tuple[int, int]], stall_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.counter, self.stall_s, self.clock = counter, stall_s, clock
        self.last_change, self.loaded = clock(), (0, 0)

    def poll(self) -> tuple[int, int]:
        loaded = self.counter()
        if loaded[0] > self.loaded[0]:
            self.last_change = self.clock()
        self.loaded = loaded
        return loaded

    def stalled(self) -> bool:
        self.poll()
        return self.clock() - self.last_change > self.stall_s


def _mapped_shm_regions() -> set[str]:
    """Names of the /dev/shm files some live process has mapped (so a sweep never removes another server's)."""
    mapped = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/maps", "rb") as maps:
                    mapped.update(
                        line.rsplit(b"/dev/shm/", 1)[1].split(b" ")[0].strip().decode(errors="replace")
                        for line in maps if b"/dev/shm/" in line
                    )
            except OSError:
                continue
    return mapped


@dataclass
class TritonServer:
    """A supervised tritonserver; use as a context manager or call ``start()`` / ``stop()``.

    Public surface: the HTTP guard on ``host:http_port`` (Triton's own HTTP endpoint listens on loopback only),
    gRPC on ``grpc_host:grpc_port`` (loopback unless told otherwise: it reaches every model, internal ones
    included) and metrics on ``host:metrics_port``. Admin APIs (``ADMIN_APIS``) need the ``ADMIN_HEADER`` header
    with ``admin_key`` unless ``open_admin_api``. A stub that dies is detected and its model reloaded."""

    model_repository: Path
    host: str = LOOPBACK
    http_port: int = 0  # 0 = pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    grpc_host: str = LOOPBACK
    model_config_name: str | None = None  # None = "cpu" when no GPU is present
    response_cache_bytes: int = 0
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    log_verbose: int = 0
    admin_key: str | None = field(default=None, repr=False)  # the operator's; None = a random key per start
    open_admin_api: bool = False
    guard_limits: GuardLimits = field(default_factory=GuardLimits)
    supervise: bool = True
    drain_timeout_s: float = 30.0  # Triton's own wait for requests in flight at stop (gRPC streams included)

    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    triton_http_port: int = field(default=0, init=False)
    # Triton's own restricted-API key, new each start: it is on Triton's command line, the operator's key never is.
    grpc_admin_key: str | None = field(default=None, init=False, repr=False)
    grpc_admin_key_file: Path | None = field(default=None, init=False)
    supervisor: StubSupervisor | None = field(default=None, init=False, repr=False)
    internal_models: set[str] = field(default_factory=set, init=False)
    model_facts: dict[str, ModelFacts] = field(default_factory=dict, init=False)
    _guard: HttpGuard | None = field(default=None, init=False, repr=False)
    _workdir: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)
    _shm_before: set[str] = field(default_factory=set, init=False, repr=False)
    _log_file: object = field(default=None, init=False, repr=False)
    _log_start: int = field(default=0, init=False, repr=False)  # where this start's lines begin in log_path
    # An unload-first heal's configs, read while the models were loaded (an unloaded model's config cannot be):
    # model → its config, and the ensembles built on it.
    _heal_configs: dict[str, dict] = field(default_factory=dict, init=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def triton_http_url(self) -> str:
        """Triton's own HTTP endpoint (loopback, unguarded): for the launcher, tests and trusted tools."""
        return f"{LOOPBACK}:{self.triton_http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def admin_headers(self) -> dict[str, str]:
        """For HTTP admin calls through the guard (which swaps the operator's key for Triton's own)."""
        return {} if self.open_admin_api else {ADMIN_HEADER: self.admin_key or ""}

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """For gRPC admin calls, which reach Triton directly: its per-start key, with Triton's gRPC prefix for
        restricted-protocol headers (also in ``grpc_admin_key_file``, for tools such as perf_analyzer)."""
        return {} if self.open_admin_api else {f"{GRPC_HEADER_PREFIX}{ADMIN_HEADER}": self.grpc_admin_key or ""}

    @property
    def _triton_admin_headers(self) -> dict[str, str]:
        """For the launcher's own calls to Triton's loopback endpoint."""
        return {} if self.open_admin_api else {ADMIN_HEADER: self.grpc_admin_key or ""}

    def command(self, binary: ServerBinary) -> list[str]:
        config_name = self.model_config_name
        if config_name is None:
            config_name = "" if gpu_present() else "cpu"
        cmd = [
            str(binary.executable),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--http-address={LOOPBACK}",
            f"--grpc-address={self.grpc_host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.triton_http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # Explicit model control: the supervisor reloads a model whose stub died (all load at start).
            "--model-control-mode=explicit",
            "--load-model=*",
            # Keep serving the models that loaded, so we can ask which ones failed and why.
            "--exit-on-error=false",
            # A busy 2-core box can keep a python stub from answering the default 30 s health check in time,
            # after which Triton marks the instance unhealthy for good.
            "--backend-config=python,stub-timeout-seconds=120",
            f"--exit-timeout-secs={max(1, round(self.drain_timeout_s))}",
            f"--log-verbose={self.log_verbose}",
        ]
        if not self.open_admin_api:
            apis = ",".join(ADMIN_APIS)
            # Triton takes these keys on its command line only: an ephemeral key, never the operator's.
            cmd += [f"--http-restricted-api={apis}:{ADMIN_HEADER}={self.grpc_admin_key}",
                    f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={self.grpc_admin_key}"]
        if config_name:
            cmd.append(f"--model-config-name={config_name}")
        if binary.backend_directory is not None:
            cmd.append(f"--backend-directory={binary.backend_directory}")
        if self.response_cache_bytes and binary.cache_directory is not None:
            cmd += [f"--cache-directory={binary.cache_directory}", f"--cache-config=local,size={self.response_cache_bytes}"]
        elif self.response_cache_bytes:
            cmd.append(f"--cache-config=local,size={self.response_cache_bytes}")
        if self.trace_file is not None:
            # Tracing stays off (level OFF) until an admin turns it on with /v2/trace/setting; Triton 2.51 takes the
            # trace file on its command line only (bench/trace_timeline.py).
            cmd.append(f"--trace-config=triton,file={self.trace_file}")
        return cmd + list(self.extra_args)

    @property
    def trace_file(self) -> Path | None:
        """Where Triton writes traces (``<this>.<n>``, one file per trace with ``log_frequency`` 1), in this start's
        private folder; None before ``start``."""
        return None if self._workdir is None else Path(self._workdir.name) / "trace.json"

    def start(self, timeout: float = 120.0, on_models_ready: Callable[[int, int], None] | None = None) -> TritonServer:
        """Launch and wait until ready; ``on_models_ready(ready, total)`` hears each change while models load."""
        for attr, host in (("http_port", self.host), ("grpc_port", self.grpc_host), ("metrics_port", self.host),
                           ("triton_http_port", LOOPBACK)):
            if getattr(self, attr) == 0:
                setattr(self, attr, free_port(host))
        if not self.open_admin_api and not self.admin_key:
            self.admin_key = secrets.token_urlsafe(24)
        self._workdir = tempfile.TemporaryDirectory(prefix="stepaudio-triton-")  # mode 0700
        if not self.open_admin_api:
            self.grpc_admin_key = secrets.token_urlsafe(32)
            self.grpc_admin_key_file = write_private(Path(self._workdir.name) / "grpc-admin-key", self.grpc_admin_key)
        binary = locate_server(Path(self._workdir.name))
        if self.log_path is None:
            self.log_path = Path(self._workdir.name) / "server.log"
        # Appended, never truncated: a restart keeps the lines that say why the last server ended.
        self._log_file = open(self.log_path, "a")
        self._log_start = self._log_file.tell()
        self._shm_before = set(glob.glob(_SHM_GLOB))
        self.process = subprocess.Popen(
            self.command(binary),
            env=binary.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can reap the python stubs too
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready(timeout, on_models_ready)
            self.model_facts = self._model_facts()
            self.internal_models = {name for name, facts in self.model_facts.items() if facts.internal}
            if self.supervise:
                self.supervisor = StubSupervisor(
                    self.process.pid, self.reload_model, log=self._event_log(), unload_model=self.unload_model,
                    load_model=self.load_model, unload_first=self._unloads_first).start()
            self._guard = HttpGuard(
                f"http://{self.triton_http_url}", self.host, self.http_port, self.guard_limits,
                down_models=self.down_models, internal_models=lambda: self.internal_models,
                admin_key=self.admin_key, upstream_admin_key=self.grpc_admin_key,
                model_facts=lambda: self.model_facts,
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _event_log(self) -> logging.Logger:
        """The launcher's own events (stub deaths, reloads) go to the server log, between Triton's lines."""
        logger = logging.getLogger(f"stepaudio_server.{self.triton_http_port}")
        handler = logging.StreamHandler(self._log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s stepaudio.supervisor %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        return logger

    def refuse_new_requests(self) -> None:
        """Answer every new HTTP request 503 from now on (safe in a signal handler: one attribute set)."""
        if self._guard is not None:
            self._guard.draining = True

    def drain(self, timeout_s: float) -> int:
        """Stop taking new HTTP requests (503, readiness false) and let those in flight finish, up to
        ``timeout_s``; returns how many were cut. gRPC clients get Triton's own drain at stop."""
        return self._guard.drain(timeout_s) if self._guard is not None else 0

    def crash_report(self) -> list[str]:
        """The HTTP requests in flight and the last ones finished, for the log line after a crash: the request
        that crashed Triton is among them (an operator blocks its client or its shape)."""
        if self._guard is None:
            return []
        in_flight, finished = self._guard.requests.snapshot()
        return ([f"in flight: {r.describe()}" for r in in_flight]
                + [f"finished: {r.describe()}" for r in finished[-5:]])

    def down_models(self) -> dict[str, str]:
        """Models the supervisor is healing (readiness answers 'not ready' while this is not empty)."""
        if self.process is None or self.process.poll() is not None:
            return {"tritonserver": "not running"}
        return self.supervisor.down() if self.supervisor is not None else {}

    def _get(self, path: str, method: str = "GET", body: bytes | None = None, timeout: float = 5) -> tuple[int, bytes]:
        """Triton's own HTTP endpoint, with the admin header."""
        request = urllib.request.Request(f"http://{self.triton_http_url}{path}", data=body, method=method,
                                         headers=self._triton_admin_headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def reload_model(self, model: str, timeout: float = 300.0) -> None:
        """Replace every instance of ``model``: its own config is loaded again as an override with a changed
        parameter (a plain load of an unchanged model is a no-op in Triton). Load first: the new instances start
        before the old ones stop (the heal of a model off the GPU; ``unload_model`` + ``load_model`` on it)."""
        self._load_config(model, self._config(model), timeout)

    def _config(self, model: str) -> dict:
        status, config = self._get(f"/v2/models/{model}/config")
        if status != 200:
            raise ServerError(f"reading the config of {model} failed ({status}): {config.decode(errors='replace')}")
        return json.loads(config)

    def _load_config(self, model: str, config: dict | None, timeout: float) -> None:
        """Load ``model`` with ``config`` as an override, changed so that a loaded model is replaced; None: a plain
        load from the repository."""
        override = b"{}"
        if config is not None:
            config = dict(config, parameters=dict(config.get("parameters", {})))
            # Identical configs only update instances in place (none is replaced); a changed parameter reloads all.
            config["parameters"]["stepaudio_reload"] = {"string_value": str(time.time_ns())}
            override = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        status, body = self._get(f"/v2/repository/models/{model}/load", method="POST", body=override, timeout=timeout)
        if status != 200:
            raise ServerError(f"reloading {model} failed ({status}): {body.decode(errors='replace')}")

    def _unloads_first(self, model: str) -> bool:
        """The heal's order for ``model``, from its loaded config (model_facts.unload_before_reload)."""
        facts = self.model_facts.get(model)
        return facts is not None and facts.unload_first

    def _dependents(self, model: str) -> list[str]:
        """The ensembles built on ``model``, directly or through another ensemble, innermost first."""
        found: list[str] = []
        frontier = [model]
        while frontier:
            name = frontier.pop(0)
            for other, facts in sorted(self.model_facts.items()):
                if name in facts.composing and other not in found and other != model:
                    found.append(other)
                    frontier.append(other)
        return found

    def _ready(self, model: str) -> bool:
        return self._get(f"/v2/models/{model}/ready")[0] == 200

    def unload_model(self, model: str, timeout: float = 300.0) -> None:
        """Unload ``model`` and return once Triton reports it unloaded (its unload API returns before that).

        ``unload_dependents`` is false: in Triton 2.51 it makes the unload of an ensemble take the composing models
        loaded along with it (core model_repository_manager.cc: RemoveNodes' cascading removal runs upstream), which
        is not what is asked here. Unloading a composing model takes the ensembles built on it down whatever the
        flag says (their dependency check fails: "contains models that are not available"), so their configs are
        kept now and ``load_model`` makes sure they come back."""
        for name in [model, *self._dependents(model)]:
            if name not in self._heal_configs and self._ready(name):
                self._heal_configs[name] = self._config(name)
        body = json.dumps({"parameters": {"unload_dependents": False}}).encode()
        status, answer = self._get(f"/v2/repository/models/{model}/unload", method="POST", body=body, timeout=timeout)
        if status != 200:
            raise ServerError(f"unloading {model} failed ({status}): {answer.decode(errors='replace')}")
        deadline = time.monotonic() + timeout
        while (states := self._states(model)) & {"READY", "LOADING", "UNLOADING"}:
            if time.monotonic() > deadline:
                raise ServerError(f"{model} is still {', '.join(sorted(states))} {timeout:.0f} s after its unload")
            time.sleep(0.2)

    def _states(self, model: str) -> set[str]:
        """The states Triton's repository index gives ``model``'s versions (READY, UNLOADING, UNAVAILABLE ...)."""
        status, body = self._get("/v2/repository/index", method="POST", body=b"{}")
        if status != 200:
            raise ServerError(f"reading the repository index failed ({status}): {body.decode(errors='replace')}")
        return {str(entry.get("state", "")) for entry in json.loads(body) if entry.get("name") == model}

    def load_model(self, model: str, timeout: float = 300.0) -> None:
        """Load ``model`` after ``unload_model`` with the config it served, then any ensemble built on it that is
        not ready again. Triton's dependency graph normally reloads those as part of the model's load (the
        ensemble waits on the missing model and is re-checked when it is added); an ensemble that did not come
        back is loaded with its own config, changed so that Triton cannot take the load for a no-op."""
        self._load_config(model, self._heal_configs.get(model), timeout)
        self._heal_configs.pop(model, None)
        for dependent in self._dependents(model):
            if not self._ready(dependent):
                self._load_config(dependent, self._heal_configs.get(dependent), timeout)
                if not self._ready(dependent):
                    raise ServerError(f"{dependent} (built on {model}) is not ready after loading it again")
            self._heal_configs.pop(dependent, None)

    def _model_facts(self) -> dict[str, ModelFacts]:
        """Each loaded model's facts the guard uses (internal access, decoupled, inputs), from its loaded config."""
        status, body = self._get("/v2/repository/index", method="POST", body=b"{}")
        names = [entry["name"] for entry in json.loads(body)] if status == 200 else []
        facts = {}
        for name in names:
            status, body = self._get(f"/v2/models/{name}/config")
            if status == 200:
                facts[name] = ModelFacts.from_config(json.loads(body))
        return facts

    def exit_report(self, lines: int = 12) -> list[str]:
        """How the server process ended (exit code or signal) and the log lines of this start that say why;
        empty while it runs."""
        if self.process is None or self.process.poll() is None:
            return []
        report = [f"tritonserver (pid {self.process.pid}) exited with {describe_exit(self.process.returncode)}"]
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_start)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return report
        return report + [line for line in text.splitlines() if _CRASH_LINE.search(line)][:lines]

    def restart(self, timeout: float = 300.0) -> TritonServer:
        """Stop what is left of this server and start it again on the same ports (clients reconnect)."""
        self.stop()
        return self.start(timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not Path(self.log_path).exists():
            return ""
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def model_failures(self) -> dict[str, str]:
        """Models that did not load, with the reason Triton gives.

        A model folder without a version folder (git drops an ensemble's empty ``1/``) is not even listed in the
        repository index, so folders with a config but no index entry count as failures too."""
        status, body = self._get("/v2/repository/index", method="POST", body=b"{}")
        if status != 200:
            return {}
        index = json.loads(body)
        failures = {
            entry["name"]: entry.get("reason", "")
            for entry in index
            if entry.get("state") == "UNAVAILABLE" and entry.get("reason")
        }
        listed = {entry["name"] for entry in index}
        for config in sorted(Path(self.model_repository).glob("*/config.pbtxt")):
            if config.parent.name not in listed:
                failures[config.parent.name] = "not loaded: no model version folder was found (add <model>/1/)"
        return failures

    def _wait_ready(self, timeout: float, on_models_ready: Callable[[int, int], None] | None = None) -> None:
        """``timeout`` bounds the time without progress: a 130B model over 8 GPUs may take far longer than a
        fixed bound to load, but a load that stalls is still noticed."""
        progress = LoadProgress(_LoadCounter(self.log_path, self.model_repository, self._log_start), timeout)
        reported = None

        def report() -> None:
            nonlocal reported
            if (loaded := progress.poll()) != reported:
                if on_models_ready is not None:
                    on_models_ready(*loaded)
                reported = loaded

        while not progress.stalled():
            report()
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}\n{self.log_tail()}")
            try:
                ready, _ = self._get("/v2/health/ready")
                live, _ = self._get("/v2/health/live")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.2)
                continue
            if ready == 200:
                report()
                return
            if live == 200:
                # Live but not ready: either still loading, or a model failed (ready stays 400 for good).
                failures = self.model_failures()
                if failures:
                    raise ModelLoadError(failures, self.log_tail())
            time.sleep(0.2)
        loaded, total = progress.poll()
        raise ServerError(f"tritonserver not ready: no model finished loading for {timeout:.0f} s "
                          f"({loaded} of {total} loaded)\n{self.log_tail()}")

    def stop(self, timeout: float | None = None) -> None:
        timeout = self.drain_timeout_s + 15 if timeout is None else timeout
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            try:  # python stubs left in the group (normally they exit with the server)
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._remove_shm_regions()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        self.process = None
        self.supervisor = None

    def _remove_shm_regions(self) -> None:
        """The regions this server's stubs used (the supervisor saw them), plus regions that appeared while it ran
        and that no live process maps: a crashed server leaves both kinds, another server's are mapped."""
        owned = set(self.supervisor.shm_regions) if self.supervisor is not None else set()
        appeared = {Path(p).name for p in set(glob.glob(_SHM_GLOB)) - self._shm_before}
        stale = owned | (appeared - _mapped_shm_regions())
        for name in stale:
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepaudio_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default=LOOPBACK, help="address of the HTTP guard and metrics (default loopback)")
    parser.add_argument("--grpc-host", default=LOOPBACK,
                        help="gRPC address (default loopback; gRPC reaches internal models: trusted networks only)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-config-name", default=None, help="default: 'cpu' when no GPU is present")
    parser.add_argument("--response-cache-bytes", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds without any model finishing its load before start-up gives up")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--admin-key-file", type=Path, default=None,
                        help=f"file (mode 600) holding the value of the {ADMIN_HEADER} header that opens the admin "
                             "APIs (default: $STEPAUDIO_ADMIN_KEY, else a random key written to a 0600 file whose "
                             "path is printed); never on a command line")
    parser.add_argument("--open-admin-api", action="store_true",
                        help=f"leave {', '.join(ADMIN_APIS)} open to every client (development only)")
    parser.add_argument("--max-body-bytes", type=int, default=GuardLimits.max_body_bytes)
    parser.add_argument("--max-json-depth", type=int, default=GuardLimits.max_json_depth)
    parser.add_argument("--max-json-string-bytes", type=int, default=GuardLimits.max_json_string_bytes)
    parser.add_argument("--max-restarts", type=int, default=5,
                        help="server crashes healed by a restart within --restart-window-s; one more ends the run")
    parser.add_argument("--restart-window-s", type=float, default=600.0)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0,
                        help="on SIGTERM/Ctrl-C, how long requests in flight may run before the server stops")
    args = parser.parse_args(argv)
    if not args.model_repository.is_dir():
        print(f"error: model repository {args.model_repository} is not a directory", file=sys.stderr)
        return 2
    templates = unrendered_configs(args.model_repository)
    if templates:
        print(f"error: {args.model_repository} is a template tree ({templates[0]} has unfilled ${{...}} values); "
              "render it first: python -m export.render_repository --checkpoints DIR --out build/model_repository "
              "(or make repository)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_dir = Path(tempfile.mkdtemp(prefix="stepaudio-launcher-"))  # 0700, outlives restarts
    key_file = None
    try:
        admin_key = (read_admin_key_file(args.admin_key_file) if args.admin_key_file
                     else os.environ.get("STEPAUDIO_ADMIN_KEY"))
    except (OSError, ServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not admin_key and not args.open_admin_api:
        admin_key = secrets.token_urlsafe(24)
        key_file = write_private(run_dir / "admin-key", admin_key)

    def new_server() -> TritonServer:
        return TritonServer(
            args.model_repository,
            host=args.host,
            grpc_host=args.grpc_host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            model_config_name=args.model_config_name,
            response_cache_bytes=args.response_cache_bytes,
            log_path=args.log_file or run_dir / "server.log",  # one log for every restart
            log_verbose=args.log_verbose,
            admin_key=admin_key,
            open_admin_api=args.open_admin_api,
            guard_limits=GuardLimits(max_body_bytes=args.max_body_bytes, max_json_depth=args.max_json_depth,
                                     max_json_string_bytes=args.max_json_string_bytes),
            drain_timeout_s=args.drain_timeout_s,
        )

    stopping = False
    running: list[TritonServer] = []  # the server being served, for the signal handler

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for server in running:
            server.refuse_new_requests()  # at once: the main loop notices ``stopping`` only at its next poll

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    restarts: collections.deque[float] = collections.deque()  # when each restart happened (monotonic)
    try:
        while True:
            server = new_server()
            running[:] = [server]
            try:
                server.start(timeout=args.timeout)
            except ServerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"tritonserver ready (log: {server.log_path})", flush=True)
            print(f"  HTTP    http://{server.http_url}   (guarded; Triton's own on {server.triton_http_url})", flush=True)
            print(f"  gRPC    {server.grpc_url}", flush=True)
            print(f"  metrics {server.metrics_url}", flush=True)
            if not server.open_admin_api:
                print(f"  admin APIs need the header {ADMIN_HEADER} with the key in "
                      f"{key_file or args.admin_key_file or '$STEPAUDIO_ADMIN_KEY'} (HTTP, through the guard); "
                      f"gRPC admin: the per-start key in {server.grpc_admin_key_file}", flush=True)
            print("Ctrl-C to stop.", flush=True)
            report: list[str] = []
            try:
                while not stopping and server.process.poll() is None:
                    time.sleep(0.5)
                if stopping and server.process.poll() is None:
                    cut = server.drain(args.drain_timeout_s)
                    print(f"drained ({cut} request(s) cut at the {args.drain_timeout_s:.0f} s drain timeout)"
                          if cut else "drained", flush=True)
            finally:
                exit_report = server.exit_report()
                if exit_report:
                    report = server.crash_report()
                server.stop()
            if stopping:
                print("stopped", flush=True)
                return 0
            print(exit_report[0], file=sys.stderr, flush=True)
            for line in exit_report[1:]:
                print(f"  its log: {line}", file=sys.stderr, flush=True)
            for line in report or ["no HTTP request had reached it"]:
                print(f"  before the exit, {line}", file=sys.stderr, flush=True)
            now = time.monotonic()
            while restarts and now - restarts[0] > args.restart_window_s:
                restarts.popleft()
            if len(restarts) >= args.max_restarts:
                print(f"{len(restarts)} restarts within {args.restart_window_s:.0f} s: giving up", file=sys.stderr,
                      flush=True)
                return 1
            restarts.append(now)
            print(f"restarting the server ({len(restarts)}/{args.max_restarts} within {args.restart_window_s:.0f} s)",
                  file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

