"""Launcher logic that needs no server: the command line it builds, the files it finds, what it refuses."""

from __future__ import annotations

from pathlib import Path

from stepaudio_server import files
from stepaudio_server import launcher as serve


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


def test_backends_and_templates_come_from_the_checkout_here():
    # An editable install has no copies under stepaudio_triton/: the checkout's folders are the ones used.
    root = Path(__file__).resolve().parents[2]
    assert files.backends_dir() == root / "backends"
    assert files.templates_dir() == root / "model_repository"


def test_launcher_refuses_the_template_tree(capsys):
    templates = files.templates_dir()
    assert serve.unrendered_configs(templates), "the templates have ${...} values to fill"
    assert serve.main(["--model-repository", str(templates)]) == 2
    assert "render it first" in capsys.readouterr().err


def test_a_rendered_config_is_not_a_template(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    assert serve.unrendered_configs(tmp_path) == []
