"""The container files: what can be checked without a container engine (none can pull images here).

The entrypoint runs in the project venv (rendering only, or with a stand-in python that prints the server command);
the Dockerfile (parsed by dockerfile-parse) copies what exists, installs into a venv with the constraints file and
starts the entrypoint it copied; the compose file parses, uses the Dockerfile's image tag and passes only render keys
that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from export.render_repository import DEFAULTS
from tests.export.test_placement import write_published

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


def _dockerfile():
    parser = pytest.importorskip("dockerfile_parse").DockerfileParser(path=str(ROOT / "docker" / "Dockerfile"))
    return parser


def _image_tag() -> str:
    return re.search(r"tritonserver:(\S+?)-py3", _dockerfile().baseimage or _dockerfile().content).group(1)


def test_dockerfile_installs_into_a_venv_with_the_constraints_keeping_the_pins():
    parser = _dockerfile()
    runs = [i["value"] for i in parser.structure if i["instruction"] == "RUN"]
    installs = [part.strip() for run in runs for part in run.split("&&") if "pip install" in part]
    assert len(installs) == 2 and all("-c docker/constraints.txt" in step for step in installs)
    assert runs[0].split("&&")[0].strip().startswith('python3 -m venv --system-site-packages "$VIRTUAL_ENV"')
    env = {i["value"].split("=", 1)[0]: i for i in parser.structure if i["instruction"] == "ENV"}
    assert env and parser.envs["PATH"].startswith(parser.envs["VIRTUAL_ENV"] + "/bin:")
    assert parser.envs["PYTHONPATH"].startswith(parser.envs["VIRTUAL_ENV"] + "/lib/python3.")
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    pins = {re.split(r"[=<>!~\[ ]", d)[0]: d.split(";")[0].strip() for d in declared}
    constraints = [line for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
                   if line and not line.startswith("#")]
    assert constraints and all(pins[re.split(r"[=<>!~]", c)[0]] == c for c in constraints)
    assert {"torch", "numpy"} <= {re.split(r"[=<>!~]", c)[0] for c in constraints}


def test_compose_uses_the_dockerfile_image_tag():
    tag = _image_tag()
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert all(service["image"].split(":", 1)[1].startswith(tag) for service in compose["services"].values())


def test_the_readme_runs_the_dockerfile_image_tag():
    readme = (ROOT / "README.md").read_text()
    bases = set(re.findall(r"tritonserver:(\S+?)-py3", readme))
    ours = set(re.findall(r"stepaudio-triton:(\d+\.\d+)", readme))
    assert bases <= {_image_tag()} and ours <= {_image_tag()} and bases | ours


def test_entrypoint_serves_grpc_on_all_interfaces(tmp_path):
    # A stand-in python: renders with the real one, prints the server command instead of starting it.
    stand_in = tmp_path / "python"
    stand_in.write_text(f"""#!/bin/sh
if [ "$2" = "export.render_repository" ]; then exec {sys.executable} "$@"; fi
echo "SERVER $*"
""")
    stand_in.chmod(0o755)
    result = _entrypoint({"PYTHON": str(stand_in), "STEPAUDIO_CHECKPOINTS": str(tmp_path),
                          "STEPAUDIO_REPOSITORY": str(tmp_path / "repo"), "STEPAUDIO_MODELS": "tts_llm",
                          "STEPAUDIO_GPUS": "none"})
    assert result.returncode == 0, result.stderr
    server = next(line for line in result.stdout.splitlines() if line.startswith("SERVER "))
    assert "--grpc-host 0.0.0.0" in server and "--host 0.0.0.0" in server


def test_entrypoint_refuses_a_deployment_the_gpus_cannot_hold(tmp_path):
    write_published(tmp_path)
    result = _entrypoint({"STEPAUDIO_CHECKPOINTS": str(tmp_path), "STEPAUDIO_REPOSITORY": str(tmp_path / "repo"),
                          "STEPAUDIO_MODELS": "chat_llm tts_llm", "STEPAUDIO_GPUS": "1x24GB",
                          "STEPAUDIO_RENDER_ONLY": "1"})
    assert result.returncode == 2
    assert "chat_llm does not fit on GPU 0 (24 GiB)" in result.stderr and "bytes" in result.stderr
    fits = _entrypoint({"STEPAUDIO_CHECKPOINTS": str(tmp_path), "STEPAUDIO_REPOSITORY": str(tmp_path / "repo"),
                        "STEPAUDIO_MODELS": "chat_llm tts_llm", "STEPAUDIO_GPUS": "8x80GB",
                        "STEPAUDIO_RENDER_ONLY": "1"})
    assert fits.returncode == 0, fits.stderr
    assert "chat_llm (vLLM)" in (tmp_path / "repo.placement.txt").read_text()
