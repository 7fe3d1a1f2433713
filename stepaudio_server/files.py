"""Where the served repository's templates (``model_repository/``) and the python-based Triton backends
(``backends/``) are.

From a checkout (or an editable install) they are the checkout's own folders. An installed wheel carries the same
files as package data of ``stepaudio_triton`` (pyproject.toml maps both folders there), so a wheel renders and
serves without a checkout. Only a path is computed here: nothing of Triton is imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

TEMPLATES = "model_repository"
BACKENDS = "backends"
_CHECKOUT = Path(__file__).resolve().parents[1]


def _shipped(name: str) -> Path:
    # find_spec of a top-level name locates stepaudio_triton without importing it (it enables faulthandler).
    spec = importlib.util.find_spec("stepaudio_triton")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / name
        if installed.is_dir():
            return installed
    checkout = _CHECKOUT / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"no {name}/ folder: neither an installed stepaudio_triton package nor a checkout at {_CHECKOUT}")


def templates_dir() -> Path:
    """The model templates ``export.render_repository`` renders (never served as they are)."""
    return _shipped(TEMPLATES)


def backends_dir() -> Path:
    """The python-based backends (``<name>/model.py``) the launcher installs next to Triton's python backend."""
    return _shipped(BACKENDS)
