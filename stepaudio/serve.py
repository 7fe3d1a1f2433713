"""Launch a real Triton Inference Server on a model repository.

``python -m stepaudio.serve --model-repository DIR`` (or ``make serve``) starts ``tritonserver``, waits until
``/v2/health/ready`` answers, prints the HTTP/gRPC/metrics URLs and stops cleanly on Ctrl-C/SIGTERM.

Where the server comes from:
- a system ``tritonserver`` on PATH (an NGC Triton container): used as is, with its own backends;
- otherwise the Triton 2.51 build inside the ``nvidia-pytriton`` wheel, set up exactly as
  ``triton-on-cpu.md`` measured: a backend directory of our own with *copies* of ``libtriton_python.so``, the
  stub and ``triton_python_backend_utils.py``; the venv's ``bin`` first on PATH (the stub finds the venv through
  ``python3``); ``LD_LIBRARY_PATH`` = Python's LIBDIR + the wheel's ``nvidia_pytriton.libs``.

The project's python-based backends (``backends/<name>/model.py``, e.g. the CPU ``onnxruntime`` backend) are
copied next to the python backend, so ONNX models whose GPU config names the native ORT backend load on this
CPU build through ``configs/cpu.pbtxt``. With no GPU present the launcher passes ``--model-config-name=cpu``.

The library never imports Triton: this module only starts a process and speaks HTTP with urllib.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
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
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_BACKENDS = PROJECT_ROOT / "backends"
_SHM_GLOB = "/dev/shm/triton_python_backend_shm_region_*"


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
    for backend in sorted(PROJECT_BACKENDS.glob("*/model.py")):
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


@dataclass
class TritonServer:
    """A tritonserver process on loopback; use as a context manager or call ``start()`` / ``stop()``."""

    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 0  # 0 = pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    model_config_name: str | None = None  # None = "cpu" when no GPU is present
    response_cache_bytes: int = 0
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    log_verbose: int = 0

    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _workdir: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)
    _shm_before: set[str] = field(default_factory=set, init=False, repr=False)
    _log_file: object = field(default=None, init=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, binary: ServerBinary) -> list[str]:
        config_name = self.model_config_name
        if config_name is None:
            config_name = "" if gpu_present() else "cpu"
        cmd = [
            str(binary.executable),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # Keep serving the models that loaded, so we can ask which ones failed and why.
            "--exit-on-error=false",
            # A busy 2-core box can keep a python stub from answering the default 30 s health check in time,
            # after which Triton marks the instance unhealthy for good.
            "--backend-config=python,stub-timeout-seconds=120",
            f"--log-verbose={self.log_verbose}",
        ]
        if config_name:
            cmd.append(f"--model-config-name={config_name}")
        if binary.backend_directory is not None:
            cmd.append(f"--backend-directory={binary.backend_directory}")
        if self.response_cache_bytes and binary.cache_directory is not None:
            cmd += [f"--cache-directory={binary.cache_directory}", f"--cache-config=local,size={self.response_cache_bytes}"]
        elif self.response_cache_bytes:
            cmd.append(f"--cache-config=local,size={self.response_cache_bytes}")
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 120.0) -> TritonServer:
        for attr in ("http_port", "grpc_port", "metrics_port"):
            if getattr(self, attr) == 0:
                setattr(self, attr, free_port(self.host))
        self._workdir = tempfile.TemporaryDirectory(prefix="stepaudio-triton-")
        binary = locate_server(Path(self._workdir.name))
        if self.log_path is None:
            self.log_path = Path(self._workdir.name) / "server.log"
        self._log_file = open(self.log_path, "w")
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
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

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

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}\n{self.log_tail()}")
            try:
                ready, _ = self._get("/v2/health/ready")
                live, _ = self._get("/v2/health/live")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.2)
                continue
            if ready == 200:
                return
            if live == 200:
                # Live but not ready: either still loading, or a model failed (ready stays 400 for good).
                failures = self.model_failures()
                if failures:
                    raise ModelLoadError(failures, self.log_tail())
            time.sleep(0.2)
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
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
        for region in set(glob.glob(_SHM_GLOB)) - self._shm_before:
            try:
                os.unlink(region)
            except OSError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        self.process = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepaudio.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address for HTTP, gRPC and metrics (default loopback)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-config-name", default=None, help="default: 'cpu' when no GPU is present")
    parser.add_argument("--response-cache-bytes", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--log-file", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.model_repository.is_dir():
        print(f"error: model repository {args.model_repository} is not a directory", file=sys.stderr)
        return 2

    server = TritonServer(
        args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_config_name=args.model_config_name,
        response_cache_bytes=args.response_cache_bytes,
        log_path=args.log_file,
        log_verbose=args.log_verbose,
    )
    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        server.start(timeout=args.timeout)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tritonserver ready (log: {server.log_path})", flush=True)
    print(f"  HTTP    http://{server.http_url}", flush=True)
    print(f"  gRPC    {server.grpc_url}", flush=True)
    print(f"  metrics {server.metrics_url}", flush=True)
    print("Ctrl-C to stop.", flush=True)
    try:
        while not stopping and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        code = server.process.returncode if server.process and server.process.poll() is not None else None
        server.stop()
    if code is not None and not stopping:
        print(f"tritonserver exited with code {code}", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
