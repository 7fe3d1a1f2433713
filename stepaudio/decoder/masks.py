"""The eager fast path for batches without padding.

The decoders take padded batches and mask every padded frame (GroupNorm statistics, convolution inputs, outputs), so
a padded batch is exact. When no frame is padding the masks are all ones and each multiplication by them is a wasted
pass over a large activation; the eager forward then passes ``mask=None`` and skips them. An export or a compile
always keeps the masked graph, which is exact for any batch (the ONNX graphs never branch on the data).
"""

from __future__ import annotations

import torch

__all__ = ["masked", "no_padding"]


def no_padding(mask: torch.Tensor) -> bool:
    """True when every frame of ``mask`` is valid and the module runs eagerly (not exporting, tracing, compiling)."""
    if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return bool(mask.all())


def masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x * mask``, or ``x`` itself for ``mask=None`` (no padding)."""
    return x if mask is None else x * mask
