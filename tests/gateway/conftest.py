"""A live gateway (``python -m gateway`` in a subprocess) in front of the session's live tritonserver.

``GatewayProcess`` starts one on a free loopback port and waits until it answers; tests that need other settings
(rate limits, a restart, a missing model) start their own next to the session one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from stepaudio.serve import PROJECT_ROOT, free_port

API_KEY = "test-key-1"
TOKENS = 40  # default speech ids per request on the test gateway (the tiny LLM rarely samples the stop id)
# Small caps keep the tiny models' requests short; limits small enough to test.
TEST_ARGS = ["--max-new-tokens", str(TOKENS), "--max-new-tokens-limit", "2000", "--chat-max-tokens", "8",
             "--chat-tts-max-new-tokens", "30", "--max-input-chars", "200", "--max-body-bytes", "2000000",
             "--max-upload-bytes", "600000", "--max-upload-seconds", "10", "--rate-per-minute", "1000",
             "--max-concurrent", "8"]


class GatewayProcess:
    def __init__(self, triton_grpc: str, db: Path, log_path: Path, *args: str, keys: tuple[str, ...] = (API_KEY,)):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "gateway", "--triton-grpc", triton_grpc, "--port", str(self.port), "--db", str(db),
                   *TEST_ARGS, *args]
        for key in keys:
            command += ["--api-key", key]
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/metrics", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
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


@pytest.fixture(scope="session")
def gateway(triton_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway")
    with GatewayProcess(triton_server.grpc_url, folder / "voices.sqlite3", folder / "gateway.log") as process:
        yield process


@pytest.fixture
def start_gateway(triton_server, tmp_path):
    """Factory for extra gateways (own settings); all stopped when the test ends."""
    started = []

    def start(*args: str, db: Path | None = None, keys: tuple[str, ...] = (API_KEY,), triton_grpc: str | None = None):
        process = GatewayProcess(triton_grpc or triton_server.grpc_url, db or tmp_path / "voices.sqlite3",
                                 tmp_path / f"gateway{len(started)}.log", *args, keys=keys)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def client(gateway):
    from openai import OpenAI

    with OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120) as openai_client:
        yield openai_client


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as session:
        yield session


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed gateway test carries the gateway's and the server's log tails (CI keeps no temp folders)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and hasattr(item, "funcargs"):
        for name in ("gateway", "triton_server"):
            process = item.funcargs.get(name)
            if process is not None:
                report.sections.append((f"{name} log (last 40 lines)", process.log_tail(40)))
