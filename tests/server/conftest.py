"""One real tritonserver per test session, on free loopback ports, against a repository built for the tests.

The server is stopped at session end whatever happened (the fixture's context manager), and every test that
talks to it goes through ``triton_server`` (defined in ``tests/conftest.py``: the gateway tests share it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stepaudio_server.launcher import TritonServer
from tests.helpers import attach_log_tails, sigterm_interrupts
from tests.server.helpers import write_smoke_onnx

SMOKE_REPOSITORY = Path(__file__).parent / "smoke_repository"


@pytest.fixture(scope="session")
def smoke_repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("smoke_repository")
    shutil.copytree(SMOKE_REPOSITORY, repo, dirs_exist_ok=True)
    (repo / "README.md").unlink()
    write_smoke_onnx(repo / "smoke_onnx" / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="session")
def smoke_server(smoke_repository, tmp_path_factory):
    """The foundation's smoke models only: protocol and server-feature tests do not wait for the Step-Audio models."""
    log = tmp_path_factory.mktemp("smoke_log") / "server.log"
    with sigterm_interrupts(), TritonServer(smoke_repository, log_path=log) as server:
        yield server


def _http(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.http_url, concurrency=16, network_timeout=300)


def _grpc(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture
def http_client(triton_server):
    client = _http(triton_server)
    yield client
    client.close()


@pytest.fixture
def grpc_client(triton_server):
    client = _grpc(triton_server)
    yield client
    client.close()


@pytest.fixture
def smoke_http(smoke_server):
    client = _http(smoke_server)
    yield client
    client.close()


@pytest.fixture
def smoke_grpc(smoke_server):
    client = _grpc(smoke_server)
    yield client
    client.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed live-server test carries the server log's tail in its report (CI keeps no temp folders)."""
    outcome = yield
    attach_log_tails(item, outcome.get_result(), ("triton_server", "smoke_server"), 60)
