"""The layering of docs/architecture.md#rooms, as import-linter contracts (pyproject.toml [tool.importlinter])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(config: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
               "--config", str(config), "--no-cache"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_layering_contract_is_kept():
    result = _lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") >= 5


def test_the_check_sees_an_import_against_the_layers(tmp_path):
    # A contract that today's tree breaks on purpose (the launcher imports aiohttp), so the check is known to bite.
    config = tmp_path / "layers.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["stepaudio_server"]\ninclude_external_packages = true\n'
                      '[[tool.importlinter.contracts]]\nname = "probe"\ntype = "forbidden"\n'
                      'source_modules = ["stepaudio_server"]\nforbidden_modules = ["aiohttp"]\n')
    result = _lint_imports(config)
    assert result.returncode != 0 and "BROKEN" in result.stdout
