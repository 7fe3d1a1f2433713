"""The wheel: runtime dependencies apart from tooling, and everything rendering and serving read from a checkout.

``test_wheel_carries_what_render_and_serve_read`` builds the wheel (a few seconds, no network: the venv's
setuptools). ``test_installed_wheel_renders_and_serves`` (slow) installs it into a venv outside the checkout and
renders and serves the decoder models from there; the full check (every model, a TTS request, a fresh venv with
freshly installed dependencies) is by hand: DEVELOPERS.md, "Installed wheel".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the project's venvs)
ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCE_PACKAGES = ("stepaudio", "stepaudio_contract", "stepaudio_server", "stepaudio_triton", "gateway", "clients", "export")
# Folders of the checkout the wheel maps into stepaudio_triton (stepaudio_server/files.py finds them there).
MAPPED = {"stepaudio_triton.backends": "backends", "stepaudio_triton.model_repository": "model_repository"}


def _tracked(*folders: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *folders], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_pyproject_lists_every_package_of_the_checkout():
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for package in SOURCE_PACKAGES for init in (ROOT / package).rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed - set(MAPPED) == found
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == MAPPED


def test_tooling_is_not_a_runtime_dependency():
    runtime = " ".join(PYPROJECT["project"]["dependencies"])
    for tool in ("pytest", "ruff", "playwright", "nvidia-pytriton", "tritonclient"):
        assert tool not in runtime
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(dep.startswith("nvidia-pytriton") for dep in extras["server"])
    assert any(dep.startswith("pytest") for dep in extras["dev"])


def test_runtime_library_imports_no_tooling():
    # The served models and the launcher must not pull in the synthetic-checkpoint writers.
    script = ("import sys, stepaudio_server.launcher, stepaudio.decoder.checkpoint, stepaudio.decoder.token2wav, "
              "stepaudio.llm.weights, stepaudio.tokenizer.tokenizer, stepaudio.tts.frontend; "
              "print(sorted(m for m in sys.modules if m.startswith('stepaudio.testing')))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    # A copy of the tracked files: building in the checkout would leave build/lib behind (stale files reach wheels).
    for name in _tracked("pyproject.toml", "README.md", *SOURCE_PACKAGES, *MAPPED.values()):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    for path in (ROOT / "stepaudio").rglob("*.py"):  # new, not yet committed modules count too
        target = source / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    out_dir = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(out_dir)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (built,) = out_dir.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    return set(zipfile.ZipFile(wheel).namelist())


def test_wheel_carries_what_render_and_serve_read(wheel_names):
    needed = {"stepaudio_server/launcher.py", "export/render_repository.py", "export/flow_onnx.py", "export/vocoder_onnx.py",
              "stepaudio/checkpoints/__main__.py", "stepaudio/testing/llm.py",  # make-tiny from the wheel
              "stepaudio/tts/data/step_audio_tts.json", "stepaudio/chat/data/step_audio_chat.json",
              "gateway/static/index.html"}
    for path in _tracked(*MAPPED.values()):
        folder, rest = path.split("/", 1)
        needed.add(f"stepaudio_triton/{folder}/{rest}")
    assert "stepaudio_triton/backends/onnxruntime/model.py" in needed
    assert "stepaudio_triton/model_repository/tts/1/model.py" in needed
    assert sorted(needed - wheel_names) == []


def test_wheel_leaves_tests_and_benchmarks_out(wheel_names):
    # clients/ ships: a client install (the `client` extra) runs them without a checkout.
    tops = {name.split("/", 1)[0] for name in wheel_names}
    assert not tops & {"tests", "bench", "backends", "model_repository", "docs"}


def test_make_lint_covers_every_python_folder():
    makefile = (ROOT / "Makefile").read_text()
    lint = next(line for line in makefile.splitlines() if "ruff check" in line).split("ruff check", 1)[1].split()
    folders = {path.parts[0] for path in map(Path, _tracked()) if path.suffix == ".py" and len(path.parts) > 1}
    assert folders - set(lint) == set()


@pytest.mark.slow  # about a minute: writes and exports the tiny decoders, starts a server
def test_installed_wheel_renders_and_serves(wheel, tmp_path):
    # A venv outside the checkout with only the wheel installed; the dependencies come from this venv through a
    # .pth entry (its editable-install hook is a .pth of its own, which a .pth-added folder does not run).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "stepaudio_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
                    str(wheel)], check=True, capture_output=True)
    work = tmp_path / "work"  # the cwd: python -m puts it first on sys.path, so it must not be the checkout
    work.mkdir()

    def run(*args: str) -> str:
        out = subprocess.run([python, *args], cwd=work, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    where = run("-c", "import stepaudio, stepaudio_server.files as f; print(stepaudio.__file__, f.backends_dir())")
    assert str(ROOT) not in where and where.count(site) == 2
    run("-m", "stepaudio.checkpoints", "make-tiny", "--out", "ckpt", "--only", "decoder")
    run("-m", "export.render_repository", "--checkpoints", "ckpt", "--out", "repo", "--only", "flow_decoder", "vocoder")
    assert (work / "repo" / "vocoder" / "1" / "model.onnx").is_file()
    server = subprocess.Popen([python, "-m", "stepaudio_server", "--model-repository", "repo", "--http-port", "0",
                               "--grpc-port", "0", "--metrics-port", "0", "--open-admin-api"],
                              cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"))
    try:
        lines, deadline = [], time.monotonic() + 600
        while time.monotonic() < deadline and not any("Ctrl-C to stop" in line for line in lines):
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
        # Ready means both ONNX models loaded through the onnxruntime backend the launcher took from the wheel.
        assert any(line.startswith("tritonserver ready") for line in lines), "".join(lines)[-3000:]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    assert server.returncode == 0


def test_gateway_and_client_installs_pull_no_torch():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "torch==2.13.0" in extras["models"] and "stepaudio-triton[models]" in extras["server"]
    for layer in ("gateway", "client"):
        names = {dep.split("[")[0].split(">")[0].split("=")[0].split("<")[0] for dep in extras[layer]}
        assert not names & {"torch", "onnxruntime", "onnx", "transformers", "stepaudio-triton", "nvidia-pytriton"}, layer
    assert [dep.split("<")[0] for dep in PYPROJECT["project"]["dependencies"]] == ["numpy"]
