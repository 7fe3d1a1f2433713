"""Run ``python -m gateway`` as a child process on a free loopback port and wait until it answers (tests, bench, demo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stepaudio_server.launcher import PROJECT_ROOT, free_port


class GatewayProcess:
    """A gateway child process; API keys travel in its environment, not on its command line (``ps`` shows that)."""

    def __init__(self, triton_grpc: str, db: Path, log_path: Path, *args: str, keys: tuple[str, ...] = (), port: int = 0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "gateway", "--triton-grpc", triton_grpc, "--port", str(self.port), "--db", str(db), *args]
        env = dict(os.environ, STEPAUDIO_GATEWAY_API_KEYS=",".join(keys))
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
