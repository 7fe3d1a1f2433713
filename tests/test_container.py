"""The container files: what can be checked without a container engine (none can pull images here).

The entrypoint runs in the project venv (rendering only, no server); the Dockerfile copies what exists and starts the
entrypoint it copied; the compose file parses and passes only render keys that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from export.render_repository import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def _entrypoint(env: dict, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(ENTRYPOINT), *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_entrypoint_renders_the_mounted_checkpoints_with_the_given_values(tmp_path):
    repository = tmp_path / "repo"
    result = _entrypoint({
        "STEPAUDIO_CHECKPOINTS": str(tmp_path),
        "STEPAUDIO_REPOSITORY": str(repository),
        "STEPAUDIO_SET": "chat_llm_engine=vllm chat_llm_tensor_parallel_size=8",
        "STEPAUDIO_MODELS": "chat_llm tts_llm",
        "STEPAUDIO_RENDER_ONLY": "1",
    })
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in repository.iterdir()) == ["chat_llm", "tts_llm"]
    chat = (repository / "chat_llm" / "config.pbtxt").read_text()
    assert 'key: "engine" value: { string_value: "vllm" }' in chat
    assert 'key: "tensor_parallel_size" value: { string_value: "8" }' in chat
    assert str(tmp_path.resolve() / "Step-Audio-Chat") in chat


def test_entrypoint_refuses_missing_checkpoints_and_unknown_values(tmp_path):
    missing = _entrypoint({"STEPAUDIO_CHECKPOINTS": str(tmp_path / "absent"), "STEPAUDIO_RENDER_ONLY": "1"})
    assert missing.returncode == 2 and "no checkpoints at" in missing.stderr
    typo = _entrypoint({
        "STEPAUDIO_CHECKPOINTS": str(tmp_path),
        "STEPAUDIO_REPOSITORY": str(tmp_path / "repo"),
        "STEPAUDIO_SET": "chat_llm_engin=vllm",
        "STEPAUDIO_RENDER_ONLY": "1",
    })
    assert typo.returncode == 2 and "unknown --set key(s) ['chat_llm_engin']" in typo.stderr


def test_dockerfile_copies_existing_paths_and_runs_the_copied_entrypoint():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    sources = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert sources and all((ROOT / source).exists() for sources_ in sources for source in sources_)
    workdir = re.search(r"^WORKDIR (\S+)", text, re.M).group(1)
    entrypoint = re.search(r'^ENTRYPOINT \["(\S+)"\]', text, re.M).group(1)
    assert entrypoint == f"{workdir}/docker/entrypoint.sh" and "COPY docker/entrypoint.sh ./docker/entrypoint.sh" in text
    assert os.access(ENTRYPOINT, os.X_OK)


def test_dockerfile_copies_every_folder_the_install_reads():
    # pyproject.toml lists its packages by name (and maps backends/, model_repository/): pip fails on a missing one.
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = {name.split(".")[0] for name in setuptools["packages"] if name not in setuptools["package-dir"]}
    needed |= set(setuptools["package-dir"].values())
    copied = {line.split()[1] for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}
    assert needed - copied == set()


def test_compose_services_build_the_dockerfile_and_set_only_known_render_keys():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"triton", "triton-chat-vllm"}
    for service in services.values():
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (ROOT / "docker" / service["build"]["context"]).resolve() == ROOT  # context: the project root
        for pair in service.get("environment", {}).get("STEPAUDIO_SET", "").split():
            assert pair.split("=", 1)[0] in DEFAULTS, pair
    chat = services["triton-chat-vllm"]
    assert chat["build"]["args"]["WITH_VLLM"] == "1"
    assert "chat_llm_instance_kind=KIND_MODEL" in chat["environment"]["STEPAUDIO_SET"]
