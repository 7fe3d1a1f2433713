"""ONNX Runtime sessions of the audio front ends (vq02, vq06, CAM++, Silero VAD): the CUDA EP where it is there.

The GPU container installs onnxruntime-gpu, whose sessions list ``CUDAExecutionProvider``; the CPU server's
onnxruntime has only the CPU EP. ``create_session`` asks for CUDA when the installed build offers it (CPU after it:
ORT places the nodes CUDA cannot run there) and says in the log which providers the session really got, so a GPU
deployment that silently runs on the CPU (a missing CUDA/cuDNN library makes ORT drop the CUDA EP with only a
warning) shows up in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
# auto (default): CUDA when the installed onnxruntime has it; cuda: ask for it (a fallback is a warning); cpu: never.
DEVICE_ENV = "STEPAUDIO_ORT_DEVICE"


def requested_providers(available: list[str], device: str = "auto", device_id: int = 0) -> list:
    """The ``providers`` list for ``InferenceSession`` on ``device`` given ORT's ``available`` providers."""
    if device not in DEVICES:
        raise ValueError(f"ONNX Runtime device must be one of {DEVICES}, got {device!r}")
    if device == "cpu" or (device == "auto" and CUDA_EP not in available):
        return [CPU_EP]
    return [(CUDA_EP, {"device_id": device_id}), CPU_EP]


def create_session(path: str | Path, options=None, *, device: str | None = None, device_id: int = 0):
    """An ``InferenceSession`` of ``path`` on CUDA when asked for and offered (``device``: DEVICES, default the
    ``STEPAUDIO_ORT_DEVICE`` environment or auto), else on the CPU; the providers it got are logged."""
    import onnxruntime as ort

    device = device or os.environ.get(DEVICE_ENV, "auto")
    providers = requested_providers(ort.get_available_providers(), device, device_id)
    session = ort.InferenceSession(str(path), options, providers=providers)
    got = session.get_providers()
    wanted_cuda = providers[0] != CPU_EP
    if wanted_cuda and CUDA_EP not in got:
        log.warning("%s: CUDA EP requested but ONNX Runtime fell back to %s (check the CUDA/cuDNN libraries)",
                    Path(path).name, got)
    elif device == "cuda" and not wanted_cuda:
        log.warning("%s: CUDA EP requested but this onnxruntime build has none; running on the CPU", Path(path).name)
    else:
        log.info("%s: ONNX Runtime providers %s", Path(path).name, got)
    return session
