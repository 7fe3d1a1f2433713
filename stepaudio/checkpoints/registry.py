"""Where each component registers the writer of its part of the checkpoint tree.

A writer is ``fn(root: Path, variant: str, seed: int) -> list[Path]``: it writes its files under ``root`` in the
real published layout (see ``layout``) and returns what it wrote. ``variant`` is ``"tiny"`` (small dims, for tests
and the demo) or ``"real"`` (published dims, random weights, for CPU benchmarks); a writer that has no real-size
variant raises ``VariantUnavailable``.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Callable

Writer = Callable[[Path, str, int], list]
VARIANTS = ("tiny", "real")

# Modules that register writers when imported; one per component.
WRITER_MODULES = (
    "stepaudio.testing.llm",
    "stepaudio.testing.tokenizer",
    "stepaudio.testing.decoder",
    "stepaudio.testing.voices",
)

_WRITERS: dict[str, Writer] = {}


class VariantUnavailable(ValueError):
    """A writer has no such variant (e.g. real-size LLM weights); a whole-tree write skips it with a warning."""


def register_writer(name: str) -> Callable[[Writer], Writer]:
    def decorate(fn: Writer) -> Writer:
        if name in _WRITERS and _WRITERS[name] is not fn:
            raise ValueError(f"checkpoint writer {name!r} registered twice")
        _WRITERS[name] = fn
        return fn

    return decorate


def writers() -> dict[str, Writer]:
    """All registered writers, importing the component modules first (in a fixed order)."""
    for module in WRITER_MODULES:
        importlib.import_module(module)
    return dict(_WRITERS)


def write_tree(root: Path, variant: str = "tiny", seed: int = 0, only: list[str] | None = None) -> list[Path]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown checkpoint variant {variant!r}; expected one of {VARIANTS}")
    available = writers()
    names = list(available) if not only else only
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown checkpoint component(s) {unknown}; known: {sorted(available)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        try:
            written += available[name](root, variant, seed)
        except VariantUnavailable as exc:
            if only:
                raise
            warnings.warn(f"skipped checkpoint component {name!r}: {exc}", stacklevel=2)
    return written
