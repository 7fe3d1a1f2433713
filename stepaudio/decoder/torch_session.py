"""The PyTorch flow behind the ``flow_decoder.onnx`` I/O contract, for the CPU server's opt-in bf16 flow.

ONNX Runtime's CPU execution provider has no bf16 MatMul, so a bf16 flow on the CPU server runs the library's
PyTorch module (on CPUs with AMX-BF16 the flow runs ~2.9× faster than in float32 at ~3 % mel error, docs/performance.md).
``TorchFlowSession`` looks like the part of an ``onnxruntime.InferenceSession`` the CPU backend uses (``run``,
``get_inputs``), so the served model keeps its validation, ragged batching and error handling; the backend's
``session_factory`` parameter names ``flow_session`` (docs/decoder-contract.md). ``run`` and
``Token2Wav.run_flow`` are one function (``run_torch_flow``). The library never imports Triton.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from stepaudio.decoder.checkpoint import load_flow
from stepaudio.decoder.feeds import FLOW_INPUTS, FLOW_OUTPUTS
from stepaudio.decoder.token2wav import run_torch_flow

# Flow dtypes a served CPU flow accepts (float16 is CUDA-only, see ``Token2Wav.from_checkpoint``).
FLOW_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SessionArg(NamedTuple):
    """An input or output of the session, as ``onnxruntime.NodeArg`` names it."""

    name: str


def flow_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` → the torch dtype; anything else raises ``ValueError``."""
    if name not in FLOW_DTYPES:
        raise ValueError(f"unsupported flow dtype {name!r}; expected one of {sorted(FLOW_DTYPES)}")
    return FLOW_DTYPES[name]


class TorchFlowSession:
    """``load_flow(decoder_dir, dtype=dtype)`` with ``run(output_names, feeds, run_options)`` → numpy arrays."""

    def __init__(self, decoder_dir: str | Path, dtype: torch.dtype = torch.float32):
        if dtype not in FLOW_DTYPES.values():
            raise ValueError(f"unsupported flow dtype {dtype}; expected one of {sorted(FLOW_DTYPES)}")
        self.dtype = dtype
        self.flow = load_flow(decoder_dir, dtype=dtype)

    def get_inputs(self) -> list[SessionArg]:
        return [SessionArg(name) for name in FLOW_INPUTS]

    def get_outputs(self) -> list[SessionArg]:
        return [SessionArg(name) for name in FLOW_OUTPUTS]

    def run(self, output_names, feeds: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        """Feeds named ``FLOW_INPUTS`` → the outputs named (``mel`` float32 whatever the flow's dtype, ``mel_lens``);
        ``run_options`` (ORT's) is accepted and ignored."""
        missing = [name for name in FLOW_INPUTS if name not in feeds]
        if missing:
            raise ValueError(f"missing flow inputs {missing}")
        unknown = [name for name in output_names if name not in FLOW_OUTPUTS]
        if unknown:
            raise ValueError(f"unknown flow outputs {unknown}; the flow gives {list(FLOW_OUTPUTS)}")
        outputs = dict(zip(FLOW_OUTPUTS, run_torch_flow(self.flow, feeds)))
        return [outputs[name] for name in output_names]


def flow_session(parameters: dict[str, str]) -> TorchFlowSession:
    """The CPU backend's ``session_factory``: the model's string parameters ``decoder_dir`` and ``flow_dtype``
    (default ``float32``) → a session; ``intra_op_thread_count`` (default 1) sets torch's intra-op threads."""
    decoder_dir = parameters.get("decoder_dir")
    if not decoder_dir:
        raise ValueError("flow_session needs the decoder_dir parameter")
    dtype = flow_dtype(parameters.get("flow_dtype", "float32"))
    torch.set_num_threads(int(parameters.get("intra_op_thread_count", "1")))
    return TorchFlowSession(decoder_dir, dtype)


__all__ = ["FLOW_DTYPES", "SessionArg", "TorchFlowSession", "flow_dtype", "flow_session"]
