"""Launcher logic that needs no server: the command line it builds."""

from __future__ import annotations

from pathlib import Path

from stepaudio import serve


def _binary(tmp_path):
    return serve.ServerBinary(Path("/bin/tritonserver"), {}, tmp_path / "backends", tmp_path / "caches")


def test_command_binds_loopback_and_uses_cpu_configs_without_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(serve, "gpu_present", lambda: False)
    cmd = serve.TritonServer(tmp_path, http_port=1, grpc_port=2, metrics_port=3).command(_binary(tmp_path))
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in cmd
    assert "--model-config-name=cpu" in cmd
    assert f"--backend-directory={tmp_path / 'backends'}" in cmd


def test_command_keeps_production_configs_on_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(serve, "gpu_present", lambda: True)
    cmd = serve.TritonServer(tmp_path, response_cache_bytes=1024).command(_binary(tmp_path))
    assert not any(flag.startswith("--model-config-name") for flag in cmd)
    assert "--cache-config=local,size=1024" in cmd


def test_wheel_backend_directory_holds_copies(tmp_path):
    binary = serve._prepare_wheel_server(tmp_path)
    python_dir = binary.backend_directory / "python"
    for name in ("libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"):
        assert (python_dir / name).is_file() and not (python_dir / name).is_symlink()
    assert (binary.backend_directory / "onnxruntime" / "model.py").is_file()
    assert binary.env["PATH"].split(":")[0].endswith("/bin")
    assert "nvidia_pytriton.libs" in binary.env["LD_LIBRARY_PATH"]
