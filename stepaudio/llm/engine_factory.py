"""Build the generation engine a served LLM model's options ask for: the native ``TorchStep1Engine`` or the vLLM
adapter (``stepaudio.llm.vllm_engine``, imported only when asked for, so the native path never needs vLLM).

Kept apart from ``engine_config`` (the options, which ``vllm_engine`` imports) so that no module imports its importer.
"""

from __future__ import annotations

import locale
import os
from typing import TYPE_CHECKING

from stepaudio.llm.engine_config import LLMEngineOptions

if TYPE_CHECKING:  # engine.py imports torch
    from stepaudio.llm.engine import GenerationEngine

# vLLM starts its engine-core and worker processes with fork on CUDA unless told otherwise; here it would fork a
# Triton python stub from a non-main thread, with CUDA possibly initialised (docs/gpu.md). Spawn is what ran.
VLLM_WORKER_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
VLLM_WORKER_METHOD = "spawn"


def ensure_utf8_text_files() -> None:
    """Make ``open()`` without an encoding read UTF-8. Triton's python stub embeds Python without PEP 538's C-locale
    coercion, so under ``LANG=C`` text files decode as ASCII and importing vLLM fails on torch's UTF-8 kernel
    templates; ``open()`` follows ``LC_CTYPE`` at call time, so setting it before the import is enough."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue


def vllm_visible_devices(device: str, visible: str | None) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for a one-GPU vLLM engine of a ``KIND_GPU`` instance on ``device`` ("cuda:N").

    vLLM ignores torch device names and takes the first visible GPU, so every ``KIND_GPU`` instance would land on
    GPU 0; narrowing the (process-wide, per-instance) visibility to GPU N places it. N indexes the GPUs already
    visible, as CUDA numbers them. None: leave the environment alone (CPU, or a KIND_MODEL instance)."""
    if not device.startswith("cuda:"):
        return None
    index = int(device.split(":", 1)[1])
    if visible is None or not visible.strip():
        return str(index)
    ids = [item.strip() for item in visible.split(",") if item.strip()]
    if index >= len(ids):
        raise ValueError(f"device {device} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return ids[index]


def build_engine(
    checkpoint: str,
    options: LLMEngineOptions,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    max_batch_size: int = 8,
) -> GenerationEngine:
    """The engine ``options`` ask for, on ``checkpoint``. ``device`` is the instance's device: the native engine
    runs there; a one-GPU vLLM engine is pinned there through ``CUDA_VISIBLE_DEVICES``; a parallel vLLM engine
    spans the visible GPUs and needs a ``KIND_MODEL`` instance (device "cpu" from Triton's point of view)."""
    options.validate()
    if options.engine == "vllm":
        if device.startswith("cuda:") and options.world_size > 1:
            raise ValueError(
                f"a vLLM engine over {options.world_size} GPUs must own them: give the model instance_group "
                "kind KIND_MODEL (count 1), not one KIND_GPU instance per GPU"
            )
        visible = vllm_visible_devices(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if visible is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible  # this python stub serves this one instance only
        ensure_utf8_text_files()
        os.environ[VLLM_WORKER_METHOD_ENV] = VLLM_WORKER_METHOD  # read by vLLM when it starts its processes
        from stepaudio.llm.vllm_engine import VllmEngine  # vLLM is imported only where it is used

        return VllmEngine.from_checkpoint(checkpoint, options, dtype=dtype, max_batch_size=max_batch_size)
    from stepaudio.llm.engine import TorchStep1Engine

    return TorchStep1Engine.from_checkpoint(
        checkpoint, dtype=dtype, device=device, max_batch_size=max_batch_size, max_seq_len=options.max_model_len
    )
