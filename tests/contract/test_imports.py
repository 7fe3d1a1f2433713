"""The contract package imports with torch, tritonclient and Triton's stub module unavailable: a client or gateway
install needs none of them to build its requests (tritonclient only when it sends them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "tritonclient", "triton_python_backend_utils", "onnxruntime", "grpc")
# Every module of the package, found on disk: a new one is held to the same rule.
MODULES = ("stepaudio_contract", *sorted(f"stepaudio_contract.{path.stem}" for path in
                                         (ROOT / "stepaudio_contract").glob("*.py") if path.stem != "__init__"))


def _run(code: str) -> subprocess.CompletedProcess:
    blocker = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
    return subprocess.run([sys.executable, "-c", blocker + code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_contract_imports_without_torch_tritonclient_or_pb_utils():
    assert {"stepaudio_contract.client", "stepaudio_contract.compat", "stepaudio_contract.specs"} <= set(MODULES)
    code = "".join(f"import {module}\n" for module in MODULES) + (
        "from stepaudio_contract import client, compat\n"
        "assert client.string('x').tolist() == [b'x']\n"
        "assert compat.TritonFeatures.for_version('2.51').error_output\n"
        f"assert not [m for m in {BLOCKED!r} if sys.modules.get(m) is not None]\n"
        "print('ok')\n")
    result = _run(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_block_bites():
    """The same subprocess fails where a module does import a blocked one (so the test above can fail)."""
    result = _run("import stepaudio_contract.client as c\nc.infer_inputs({}, 'grpc')\n")
    assert result.returncode != 0 and "tritonclient" in result.stderr
