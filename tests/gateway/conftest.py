"""A live gateway (``python -m gateway`` in a subprocess, ``gateway.process.GatewayProcess``) in front of the
session's live tritonserver; tests that need other settings (rate limits, a restart, a missing model) start their
own next to the session one."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest

from gateway.process import GatewayProcess
from tests.gateway.helpers import API_KEY, TOKENS
from tests.helpers import attach_log_tails

# Small caps keep the tiny models' requests short; limits small enough to test.
TEST_ARGS = ["--max-new-tokens", str(TOKENS), "--max-new-tokens-limit", "2000", "--chat-max-tokens", "8",
             "--chat-tts-max-new-tokens", "30", "--max-input-chars", "200", "--max-body-bytes", "2000000",
             "--max-upload-bytes", "600000", "--max-upload-seconds", "10", "--rate-per-minute", "1000",
             "--max-concurrent", "8"]


@pytest.fixture(scope="session")
def gateway(triton_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway")
    with GatewayProcess(triton_server.grpc_url, folder / "voices.sqlite3", folder / "gateway.log", *TEST_ARGS,
                        keys=(API_KEY,)) as process:
        yield process


@pytest.fixture
def start_gateway(triton_server, tmp_path):
    """Factory for extra gateways (own settings); all stopped when the test ends."""
    started = []

    def start(*args: str, db: Path | None = None, keys: tuple[str, ...] = (API_KEY,), triton_grpc: str | None = None):
        process = GatewayProcess(triton_grpc or triton_server.grpc_url, db or tmp_path / "voices.sqlite3",
                                 tmp_path / f"gateway{len(started)}.log", *TEST_ARGS, *args, keys=keys)
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
    attach_log_tails(item, outcome.get_result(), ("gateway", "triton_server"))
