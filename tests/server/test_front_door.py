"""The launcher's front door against live servers (issue #23, launcher side): the guard cannot be bypassed into a
Triton crash, checks any 64 MiB body without freezing, restarts are budgeted per time window and a crash names the
request before it, the operator's admin key is on no command line, and SIGTERM drains running streams.

Most tests use the smoke repository (it starts in seconds); the drain test streams from tts_stream."""

from __future__ import annotations

import gzip
import json
import os
import signal
import time

import pytest

from stepaudio_server.launcher import ADMIN_HEADER, TritonServer
from tests.server.front_door_helpers import (
    MIB,
    SMALL_INFER,
    Canary,
    Launcher,
    all_command_lines,
    get,
    hostile_bodies,
    post,
)

pytestmark = pytest.mark.server

# Crashed Triton 2.51 (SIGSEGV) through smoke_stream's COUNT input as through tts_stream's TEXT: nesting in a tensor.
NESTED = b'{"COUNT":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
GENERATE = "/v2/models/smoke_stream/generate_stream"


@pytest.fixture(scope="module")
def guarded_smoke(smoke_repository, tmp_path_factory):
    """A smoke server of this module's own: a bypass that crashes it must not take the session's server."""
    log = tmp_path_factory.mktemp("front_door") / "server.log"
    with TritonServer(smoke_repository, log_path=log) as server:
        yield server


def _alive(server: TritonServer, pid: int) -> None:
    assert server.process.pid == pid and server.process.poll() is None, server.log_tail(20)
    assert get(server.http_url, "/v2/health/ready")[0] == 200


@pytest.mark.parametrize("name, headers, body", [
    ("header says no JSON", [("Inference-Header-Content-Length", "0")], NESTED),
    ("header repeated", [("Inference-Header-Content-Length", "2"), ("Inference-Header-Content-Length", "0")],
     NESTED),
    ("gzip", [("Content-Encoding", "gzip")], gzip.compress(NESTED)),
])
def test_the_crash_body_cannot_bypass_the_guard(guarded_smoke, name, headers, body):
    pid = guarded_smoke.process.pid
    for path in (GENERATE, "/v2/models/smoke_stream/generate", "/v2/models/smoke_stream/infer"):
        status = _send_raw(guarded_smoke.http_url, path, headers, body)
        assert 400 <= status < 500, (name, path, status)
        _alive(guarded_smoke, pid)


def _send_raw(url: str, path: str, headers: list[tuple[str, str]], body: bytes) -> int:
    import http.client

    host, port = url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Length", str(len(body)))
        for key, value in headers:
            connection.putheader(key, value)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_binary_request_is_framed_as_triton_frames_it(guarded_smoke):
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    data = b"\0\0\x80?" * 4  # four 1.0f
    ok = post(guarded_smoke.http_url, "/v2/models/smoke_scale/infer", header + data,
              {"Inference-Header-Content-Length": str(len(header))})
    assert ok[0] == 200 and json.loads(ok[1])["outputs"][0]["data"] == [2.0] * 4
    status, body = post(guarded_smoke.http_url, "/v2/models/smoke_scale/infer", header + data + NESTED,
                        {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and b"binary_data_size add up to 16" in body
    _alive(guarded_smoke, guarded_smoke.process.pid)


@pytest.mark.parametrize("shape", list(hostile_bodies(1024)))
def test_a_64_mib_hostile_body_is_refused_while_the_canary_answers(guarded_smoke, shape):
    body = hostile_bodies(64 * MIB)[shape]
    pid = guarded_smoke.process.pid
    with Canary(guarded_smoke.http_url) as canary:
        for path, headers in ((GENERATE, {}), ("/v2/models/smoke_scale/infer", {}),
                              ("/v2/models/smoke_scale/infer", {"Inference-Header-Content-Length": str(len(body))}),
                              ("/v2/repository/index", {})):
            status, reply = post(guarded_smoke.http_url, path, body, headers)
            assert 400 <= status < 500, (shape, path, status, reply[:200])
        time.sleep(0.5)  # one more canary round after the last body
    assert canary.rounds >= 2 and not canary.failures, canary.failures
    assert canary.worst_s < 5.0, f"the canary waited {canary.worst_s:.1f} s"
    _alive(guarded_smoke, pid)


def test_the_operator_key_is_on_no_command_line_and_admin_works(smoke_repository, tmp_path):
    key = "operator-" + os.urandom(12).hex()
    launcher = Launcher(smoke_repository, env=dict(os.environ, STEPAUDIO_ADMIN_KEY=key))
    try:
        launcher.wait_for("Ctrl-C to stop", 120)
        assert not [line for line in all_command_lines() if key.encode() in line], "the key is in ps"
        assert key not in "".join(launcher.output), "the key was printed"
        url = launcher.http_url
        assert get(url, "/v2/models/smoke_scale/config", {ADMIN_HEADER: key})[0] == 200
        for wrong in ({}, {ADMIN_HEADER: "guess"}):
            status, body = get(url, "/v2/models/smoke_scale/config", wrong)
            assert status >= 400 and b"restricted" in body
        grpc_key_file = next(line for line in launcher.output if "gRPC admin" in line).rsplit(" ", 1)[1].strip()
        assert os.stat(grpc_key_file).st_mode & 0o777 == 0o600
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{launcher.grpc_port}")
        try:
            headers = {"triton-grpc-protocol-stepaudio-admin-key": open(grpc_key_file).read().strip()}
            assert client.get_model_config("smoke_scale", headers=headers).config.name == "smoke_scale"
        finally:
            client.close()
    finally:
        launcher.stop()


def test_restarts_are_budgeted_per_window_and_a_crash_names_the_request_before_it(smoke_repository):
    window = 20.0
    launcher = Launcher(smoke_repository, "--max-restarts", "1", "--restart-window-s", str(window))
    try:
        launcher.wait_for("Ctrl-C to stop", 120)
        assert post(launcher.http_url, "/v2/models/smoke_scale/infer", SMALL_INFER)[0] == 200
        os.kill(launcher.tritonserver_pid(), signal.SIGSEGV)
        launcher.wait_for("exited with signal SIGSEGV", 30)
        launcher.wait_for("its log: Signal (11) received", 5)  # the server's own line, quoted from its log
        assert "POST /v2/models/smoke_scale/infer (%d body bytes)" % len(SMALL_INFER) in \
            launcher.wait_for("before the exit, finished:", 5)
        first = time.monotonic()
        launcher.wait_for("restarting the server (1/1", 5)
        launcher.wait_for("Ctrl-C to stop", 120)
        time.sleep(max(0.0, window + 1 - (time.monotonic() - first)))  # the first restart leaves the window
        os.kill(launcher.tritonserver_pid(), signal.SIGKILL)
        launcher.wait_for("restarting the server (1/1", 30)  # a lifetime counter would give up here
        launcher.wait_for("Ctrl-C to stop", 120)
        os.kill(launcher.tritonserver_pid(), signal.SIGKILL)  # a second crash within the window
        launcher.wait_for("giving up", 30)
        assert launcher.process.wait(30) == 1
    finally:
        launcher.stop()


def _sse_samples(body: bytes) -> tuple[int, int]:
    """(events, WAVEFORM samples) in a generate_stream reply."""
    events = samples = 0
    for line in body.split(b"\n"):
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            assert "error" not in event, event
            events += 1
            samples += len(event.get("WAVEFORM", []))
    return events, samples


def test_sigterm_drains_a_running_stream(model_repository):
    import threading

    launcher = Launcher(model_repository, "--drain-timeout-s", "60", "--timeout", "300")
    try:
        launcher.wait_for("Ctrl-C to stop", 600)
        request = json.dumps({"TEXT": "你好，世界。", "SPEAKER": "Tingting", "MAX_NEW_TOKENS": 300,
                              "SEED": 1}).encode()
        reference = _sse_samples(post(launcher.http_url, "/v2/models/tts_stream/generate_stream", request)[1])
        assert reference[1] > 0
        outcome = {}
        running = threading.Thread(target=lambda: outcome.update(
            reply=post(launcher.http_url, "/v2/models/tts_stream/generate_stream", request, timeout=300)))
        started = time.monotonic()
        running.start()
        time.sleep(0.5)
        launcher.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body = get(launcher.http_url, "/v2/health/ready")
        assert status == 503 and b"shutting down" in body
        running.join(300)
        assert outcome["reply"][0] == 200 and _sse_samples(outcome["reply"][1]) == reference
        assert launcher.process.wait(120) == 0
        assert time.monotonic() - started < 120
        assert any("drained" in line for line in launcher.output), launcher.output[-5:]
    finally:
        launcher.stop()
