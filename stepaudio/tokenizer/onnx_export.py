"""One way to turn a torch module into an ONNX file: the dynamo exporter, weights inside the file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> Path:
    """``dynamic_shapes`` follows ``torch.export`` (one entry per arg: {axis: Dim} or None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    return path
