"""Every ``__all__`` names only what its module really provides (lazy attributes included)."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stepaudio", "stepaudio_triton", "gateway", "export")
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for package in PACKAGES
    for path in (ROOT / package).rglob("*.py")
    if "__all__" in path.read_text(encoding="utf-8")
)


def test_the_scan_finds_the_all_lists():
    assert {"stepaudio.llm", "stepaudio.decoder", "stepaudio_triton.generation"} <= set(MODULES)


def _stand_in_attribute(attr: str):
    if attr.startswith("__"):  # inspect and importlib probe dunders: a fake must not invent them
        raise AttributeError(attr)
    return type(attr, (Exception,), {})


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name, monkeypatch):
    # stepaudio_triton imports triton_python_backend_utils, which only Triton's stub provides.
    fake = types.ModuleType("triton_python_backend_utils")
    fake.__getattr__ = _stand_in_attribute
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", sys.modules.get("triton_python_backend_utils", fake))
    module = importlib.import_module(name)
    assert len(module.__all__) == len(set(module.__all__)), "a name is listed twice"
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
