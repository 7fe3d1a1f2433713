"""What the front-door tests share: hostile bodies, a canary, and ``python -m stepaudio_server`` as a process."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from stepaudio_server.launcher import free_port

MIB = 1024 * 1024


def hostile_bodies(size: int) -> dict[str, bytes]:
    """One body of each adversarial shape, ``size`` bytes or just under."""
    return {
        "nested-arrays": b"[" * size,
        "object-chain": b'{"a":' * (size // 5),
        "quote-backslash": b'"\\' * (size // 2),  # what made the old string regex backtrack
        "long-string": b'{"COUNT":"' + b"x" * (size - 13) + b'"}',
        "many-keys": b"{" + b",".join(b'"%d":0' % i for i in range(size // 12)) + b"}",
        "empty-lists": b'{"COUNT":[' + b"[]," * (size // 3 - 5) + b"[]]}",
        "invalid-utf8": b'{"COUNT":"' + b"\xff" * (size - 13) + b'"}',
    }


def post(url: str, path: str, body: bytes, headers: dict | None = None, timeout: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{url}{path}", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get(url: str, path: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{url}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


SMALL_INFER = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                      "data": [1, 2, 3, 4]}]}).encode()


class Canary:
    """Readiness and one small infer (smoke_scale) in a loop on a thread; ``worst_s`` is the slowest answer and
    ``failures`` what was not a 200."""

    def __init__(self, url: str):
        self.url, self.worst_s, self.failures, self.rounds = url, 0.0, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            for call in (lambda: get(self.url, "/v2/health/ready", timeout=30),
                         lambda: post(self.url, "/v2/models/smoke_scale/infer", SMALL_INFER, timeout=30)):
                started = time.monotonic()
                try:
                    status, body = call()
                except OSError as exc:
                    status, body = 0, repr(exc).encode()
                self.worst_s = max(self.worst_s, time.monotonic() - started)
                if status != 200:
                    self.failures.append((status, body[:200]))
            self.rounds += 1
            self._stop.wait(0.1)


class Launcher:
    """``python -m stepaudio_server`` in a process of its own; stdout and stderr are collected line by line."""

    def __init__(self, repository: Path, *args: str, env: dict | None = None, cwd: Path | None = None):
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stepaudio_server", "--model-repository", str(repository),
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--metrics-port", str(self.metrics_port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=cwd or Path(__file__).resolve().parents[2])
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout_s:.0f} s; output:\n{''.join(self.output)[-4000:]}")

    def tritonserver_pid(self) -> int:
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2 :].split()[1]) == self.process.pid and argv0.endswith(b"tritonserver"):
                return int(entry)
        raise AssertionError("the launcher has no tritonserver child")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def all_command_lines() -> list[bytes]:
    lines = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines.append(Path(f"/proc/{entry}/cmdline").read_bytes())
        except OSError:
            continue
    return lines
