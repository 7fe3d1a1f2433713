"""The engine factory: vLLM workers start with spawn, and the options module imports neither engine."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

from stepaudio.llm import engine_factory
from stepaudio.llm.engine_config import LLMEngineOptions

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_engine_config_and_vllm_engine_do_not_import_each_other():
    options_imports = _imported_modules(ROOT / "stepaudio/llm/engine_config.py")
    assert not options_imports & {"stepaudio.llm.vllm_engine", "stepaudio.llm.engine_factory", "stepaudio.llm.engine"}
    assert "stepaudio.llm.engine_factory" not in _imported_modules(ROOT / "stepaudio/llm/vllm_engine.py")


def test_a_vllm_engine_starts_its_workers_with_spawn(monkeypatch):
    seen = {}

    class FakeVllmEngine:
        @classmethod
        def from_checkpoint(cls, checkpoint, options, dtype=None, max_batch_size=8):
            import os

            seen["method"] = os.environ.get("VLLM_WORKER_MULTIPROC_METHOD")
            seen["visible"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            return cls()

    monkeypatch.setitem(sys.modules, "stepaudio.llm.vllm_engine", types.SimpleNamespace(VllmEngine=FakeVllmEngine))
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")  # an inherited fork is overridden
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    engine = engine_factory.build_engine("/ckpt", LLMEngineOptions(engine="vllm"), device="cuda:2")
    assert isinstance(engine, FakeVllmEngine)
    assert seen == {"method": "spawn", "visible": "2"}
