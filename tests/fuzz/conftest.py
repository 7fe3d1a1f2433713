"""The fuzz tests' stack: the session's live tritonserver (``tests/conftest.py``) and a gateway of their own, with
limits high enough that the campaign is not answered 429 throughout, and an address-space cap so that a decoding
bug cannot take the memory of the whole machine (it shows as a failure instead)."""

from __future__ import annotations

import resource

import pytest

from gateway.process import GatewayProcess
from tests.fuzz.harness import Stack
from tests.helpers import attach_log_tails

API_KEY = "fuzz-key-1"
GATEWAY_ARGS = ["--max-new-tokens", "8", "--max-new-tokens-limit", "64", "--chat-max-tokens", "4",
                "--chat-tts-max-new-tokens", "8", "--max-input-chars", "200", "--max-body-bytes", "2000000",
                "--max-upload-bytes", "600000", "--max-upload-seconds", "10", "--rate-per-minute", "1000000",
                "--max-concurrent", "16", "--auth-failures-per-minute", "1000000"]
GATEWAY_ADDRESS_SPACE = 8 << 30  # bytes of virtual memory the fuzzed gateway may map (its baseline maps ~1.4 GiB)


def cap_address_space(pid: int, limit: int = GATEWAY_ADDRESS_SPACE) -> None:
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


@pytest.fixture(scope="module")
def fuzz_gateway(triton_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_gateway")
    with GatewayProcess(triton_server.grpc_url, folder / "voices.sqlite3", folder / "gateway.log", *GATEWAY_ARGS,
                        keys=(API_KEY,)) as process:
        cap_address_space(process.process.pid)
        yield process


@pytest.fixture  # per test: a session server restarted after a crash (tests/conftest.py) is a new process
def fuzz_stack(triton_server, fuzz_gateway) -> Stack:
    return Stack(guard_address=(triton_server.host, triton_server.http_port),
                 gateway_address=("127.0.0.1", fuzz_gateway.port),
                 processes={"server": triton_server.process, "gateway": fuzz_gateway.process},
                 server_log=triton_server.log_path, api_key=API_KEY)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed fuzz test carries the gateway's and the server's log tails."""
    outcome = yield
    attach_log_tails(item, outcome.get_result(), ("fuzz_gateway", "triton_server"))
