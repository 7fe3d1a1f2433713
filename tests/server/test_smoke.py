"""Foundation smoke tests against the live server: protocols, ensemble, decoupled streaming, batching, ONNX."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stepaudio_server.launcher import ADMIN_HEADER, ModelLoadError, TritonServer
from tests.server.helpers import BatchCounts, grpc_input, http_input

pytestmark = pytest.mark.server


def test_server_binds_loopback_and_reports_version(smoke_server, smoke_http):
    assert smoke_server.host == "127.0.0.1"
    assert smoke_http.is_server_ready()
    assert smoke_http.get_server_metadata()["version"] == "2.51.0"


def test_http_inference(smoke_http):
    x = np.arange(5, dtype=np.float32)[None]
    result = smoke_http.infer("smoke_scale", [http_input("INPUT0", x)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)


def test_grpc_inference(smoke_grpc):
    x = np.linspace(-1, 1, 7, dtype=np.float32)[None]
    result = smoke_grpc.infer("smoke_scale", [grpc_input("INPUT0", x)])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), 2 * x)


def test_ensemble(smoke_http):
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    result = smoke_http.infer("smoke_ensemble", [http_input("X", x)])
    np.testing.assert_array_equal(result.as_numpy("Y"), 2 * x + 1)


def test_decoupled_stream_over_grpc(smoke_grpc):
    responses: queue.Queue = queue.Queue()
    smoke_grpc.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        smoke_grpc.async_stream_infer(
            "smoke_stream", [grpc_input("COUNT", np.array([5], dtype=np.int32))], enable_empty_final_response=True
        )
        indices = []
        while True:
            result, error = responses.get(timeout=30)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
            indices.append(int(result.as_numpy("INDEX")[0]))
    finally:
        smoke_grpc.stop_stream()
    assert indices == [0, 1, 2, 3, 4]


def test_decoupled_error_is_invalid_arg_and_server_stays_ready(smoke_grpc):
    responses: queue.Queue = queue.Queue()
    smoke_grpc.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        smoke_grpc.async_stream_infer("smoke_stream", [grpc_input("COUNT", np.array([-1], dtype=np.int32))])
        _, error = responses.get(timeout=30)
    finally:
        smoke_grpc.stop_stream()
    assert error is not None and "COUNT must be >= 0" in str(error)
    assert smoke_grpc.is_server_ready()


def test_dynamic_batching_in_statistics(smoke_server):
    import tritonclient.http as httpclient

    counts = BatchCounts(smoke_server, "smoke_scale")
    client = httpclient.InferenceServerClient(smoke_server.http_url, concurrency=8)
    try:
        x = np.ones((1, 16), dtype=np.float32)
        # tritonclient.http is gevent-based: concurrency comes from async_infer, not from threads.
        pending = [client.async_infer("smoke_scale", [http_input("INPUT0", x * i)]) for i in range(8)]
        outputs = [p.get_result() for p in pending]
    finally:
        client.close()
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), 2 * i * x)
    inferences, executions = counts.settle(8)
    assert inferences == 8
    assert executions < 8, "8 concurrent requests were not batched"


def test_onnx_model_through_cpu_config(smoke_http, smoke_server):
    # config.pbtxt (native ORT, KIND_GPU) sits next to configs/cpu.pbtxt: the CPU server must have loaded the latter.
    config = smoke_http.get_model_config("smoke_onnx", headers={ADMIN_HEADER: smoke_server.admin_key})
    assert config["backend"] == "onnxruntime"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    gain = np.array([[1.0], [2.0]], dtype=np.float32)
    result = smoke_http.infer("smoke_onnx", [http_input("x", x), http_input("gain", gain)])
    np.testing.assert_allclose(result.as_numpy("y"), 3 * x * gain + 1)
    np.testing.assert_allclose(result.as_numpy("total"), (3 * x * gain + 1).sum(axis=1, keepdims=True))


def test_failed_model_load_is_reported_with_its_error(tmp_path):
    broken = Path(__file__).parent / "broken_repository"
    with pytest.raises(ModelLoadError) as info:
        TritonServer(broken, log_path=tmp_path / "log").start(timeout=60)
    assert "smoke_broken" in info.value.failures
    assert "deliberate test failure" in info.value.failures["smoke_broken"]


def test_a_crashed_server_says_why_and_restarts_on_its_ports_with_its_log_kept(tmp_path):
    import shutil
    import signal
    import urllib.request

    model_repository = tmp_path / "crash_repository"
    shutil.copytree(Path(__file__).parent / "smoke_repository" / "smoke_offset", model_repository / "smoke_offset")
    server = TritonServer(model_repository, log_path=tmp_path / "server.log")
    with server.start(timeout=120):
        assert server.exit_report() == []
        first_pid, ports = server.process.pid, (server.http_port, server.grpc_port)
        os.kill(first_pid, signal.SIGSEGV)
        server.process.wait(30)
        report = server.exit_report()
        assert report[0] == f"tritonserver (pid {first_pid}) exited with signal SIGSEGV"
        assert any("Signal (11) received" in line for line in report[1:])
        server.restart(timeout=120)
        assert (server.http_port, server.grpc_port) == ports and server.process.pid != first_pid
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=10) as response:
            assert response.status == 200
        assert server.exit_report() == []  # the new start's lines only
    log = (tmp_path / "server.log").read_text()
    assert "Signal (11) received" in log and log.count("Started GRPCInferenceService") == 2


def test_cli_starts_prints_urls_and_stops_cleanly_on_sigterm(tmp_path):
    import shutil
    import signal

    # A repository of its own, so its stubs are told apart from the session server's.
    model_repository = tmp_path / "cli_repository"
    shutil.copytree(Path(__file__).parent / "smoke_repository" / "smoke_offset", model_repository / "smoke_offset")

    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepaudio_server", "--model-repository", str(model_repository),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert any(line.strip().startswith("HTTP    http://127.0.0.1:") for line in lines), lines
        assert any(line.strip().startswith("gRPC    127.0.0.1:") for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # No python stubs of that server left and no new shared-memory regions.
    stubs = subprocess.run(["pgrep", "-f", "triton_python_backend_stub.*" + str(model_repository)], capture_output=True)
    assert stubs.returncode == 1, stubs.stdout
    leaked = [n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("triton_python_backend")]
    assert leaked == []


def test_server_dies_with_a_killed_launcher(tmp_path):
    import shutil
    import signal
    import time

    model_repository = tmp_path / "orphan_repository"
    shutil.copytree(Path(__file__).parent / "smoke_repository" / "smoke_offset", model_repository / "smoke_offset")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepaudio_server", "--model-repository", str(model_repository),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:
        if line.startswith("Ctrl-C"):
            break
    pattern = "tritonserver.*" + str(model_repository)
    assert subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0
    proc.send_signal(signal.SIGKILL)  # no clean-up code of the launcher runs
    proc.wait()
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "tritonserver outlived its killed launcher"
        time.sleep(0.5)


def test_model_folder_without_version_is_reported_not_waited_on(tmp_path):
    import shutil

    # git keeps no empty folders, so an ensemble committed without a placeholder in 1/ arrives without it.
    repository = tmp_path / "no_version"
    shutil.copytree(Path(__file__).parent / "smoke_repository" / "smoke_offset", repository / "smoke_offset")
    (repository / "smoke_orphan").mkdir()
    shutil.copy(repository / "smoke_offset" / "config.pbtxt", repository / "smoke_orphan" / "config.pbtxt")
    config = repository / "smoke_orphan" / "config.pbtxt"
    config.write_text(config.read_text().replace('"smoke_offset"', '"smoke_orphan"'))
    with pytest.raises(ModelLoadError) as info:
        TritonServer(repository, log_path=tmp_path / "log").start(timeout=60)
    assert list(info.value.failures) == ["smoke_orphan"]
    assert "version folder" in info.value.failures["smoke_orphan"]


def test_start_reports_models_ready_as_they_load(smoke_repository, tmp_path):
    """The demo's loading bar: models loaded so far (from the server's log), ending at every model."""
    counts = []
    with TritonServer(smoke_repository, log_path=tmp_path / "log").start(
            timeout=60, on_models_ready=lambda ready, total: counts.append((ready, total))):
        pass
    models = len([p for p in smoke_repository.iterdir() if (p / "config.pbtxt").is_file()])
    assert counts[0][0] < models and counts[-1] == (models, models)  # seen while loading, then complete
    assert [ready for ready, _ in counts] == sorted(ready for ready, _ in counts)
