"""Launcher logic that needs no server: the command line it builds, the files it finds, what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_the_operator_key_is_never_on_tritons_command_line(monkeypatch, tmp_path):
    monkeypatch.setattr(serve, "gpu_present", lambda: False)
    server = serve.TritonServer(tmp_path, admin_key="operator-secret-0123456789")
    server.grpc_admin_key = "ephemeral-per-start"
    cmd = " ".join(server.command(_binary(tmp_path)))
    assert "operator-secret" not in cmd and "operator-secret" not in repr(server)
    assert "--http-restricted-api=" in cmd and "=ephemeral-per-start" in cmd
    assert server.admin_headers == {serve.ADMIN_HEADER: "operator-secret-0123456789"}  # through the guard
    assert server.grpc_admin_headers == {"triton-grpc-protocol-stepaudio-admin-key": "ephemeral-per-start"}


def test_an_admin_key_file_others_can_read_is_refused(tmp_path):
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    key.chmod(0o644)
    with pytest.raises(serve.ServerError, match="chmod 600"):
        serve.read_admin_key_file(key)
    key.chmod(0o600)
    assert serve.read_admin_key_file(key) == "k" * 32
    written = serve.write_private(tmp_path / "out", "secret")
    assert written.stat().st_mode & 0o777 == 0o600


def test_the_readiness_wait_follows_load_progress(tmp_path):
    """Issue #24 item 4: a start-up that keeps loading models is never cut by a fixed bound; one that stalls is."""
    for name in ("a", "b", "c"):
        (tmp_path / "repo" / name).mkdir(parents=True)
        (tmp_path / "repo" / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    log = tmp_path / "server.log"
    log.write_text("I1207 model_lifecycle.cc] loading: a:1\n")
    now = [0.0]
    progress = serve.LoadProgress(serve._LoadCounter(log, tmp_path / "repo"), stall_s=100, clock=lambda: now[0])
    for name in ("a", "b", "c"):  # one model every 90 s: 270 s in all, past a fixed 100 s bound
        now[0] += 90
        assert not progress.stalled()
        with open(log, "a") as f:
            f.write(f"I1207 model_lifecycle.cc] successfully loaded '{name}'\n")
        assert not progress.stalled()
    assert progress.poll() == (3, 3)
    now[0] += 100
    assert not progress.stalled()
    now[0] += 1
    assert progress.stalled(), "101 s without a model loading"
