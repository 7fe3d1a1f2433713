"""The machine's fp32 matmul peak (torch, N threads): the yardstick every "% of peak" in the bench output uses."""

from __future__ import annotations

import time


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    import torch  # the report runs without torch until it measures

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
