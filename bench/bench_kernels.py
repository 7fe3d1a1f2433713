"""The kernel speeds docs/performance.md argues from: matmul by runtime and dtype, and the U-Net's attention.

    python bench/bench_kernels.py [--threads 2] [--n 2048]

- matmul n×n: torch float32 / bfloat16 (oneDNN: AMX where the CPU has it), ONNX Runtime CPU float32 / float16, and
  whether ONNX Runtime's CPU execution provider implements a bfloat16 MatMul at all;
- attention at the U-Net's shape (CFG batch 2, 8 heads of 64, T frames): PyTorch's scaled_dot_product_attention
  in float32 and bfloat16.
GFLOP/s is 2·n³ per matmul and 4·B·heads·T²·64 per attention call; best of a few runs each.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F


def best_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ort_matmul_session(elem_type: int, n: int, threads: int):
    """A one-node MatMul graph, or None when the CPU execution provider has no kernel for the type."""
    import onnxruntime as ort
    from onnx import helper

    inputs = [helper.make_tensor_value_info(name, elem_type, [n, n]) for name in ("a", "b")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", inputs,
                              [helper.make_tensor_value_info("c", elem_type, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # NOT_IMPLEMENTED: no kernel for this type
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=2048)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, flop = args.n, 2 * args.n**3

    from onnx import TensorProto

    print(f"matmul {n}×{n}, {args.threads} threads (GFLOP/s)")
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        print(f"  torch {str(dtype).removeprefix('torch.'):<9} {flop / best_seconds(partial(torch.matmul, a, b)) / 1e9:8.0f}")
    ort_types = (("float32", TensorProto.FLOAT, np.float32), ("float16", TensorProto.FLOAT16, np.float16),
                 ("bfloat16", TensorProto.BFLOAT16, None))
    for name, elem_type, np_dtype in ort_types:
        session = ort_matmul_session(elem_type, n, args.threads)
        if session is None:
            print(f"  onnxruntime {name:<9} no CPU kernel")
            continue
        feeds = {k: np.random.default_rng(0).standard_normal((n, n)).astype(np_dtype) for k in ("a", "b")}
        print(f"  onnxruntime {name:<9} {flop / best_seconds(partial(session.run, None, feeds)) / 1e9:8.0f}")

    print("attention, batch 2 × 8 heads of 64 (GFLOP/s)")
    for frames in (560, 1120):
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(2, 8, frames, 64, dtype=dtype) for _ in range(3))
            seconds = best_seconds(partial(F.scaled_dot_product_attention, q, k, v))
            print(f"  T {frames:>5} torch {str(dtype).removeprefix('torch.'):<9} "
                  f"{4 * 2 * 8 * frames * frames * 64 / seconds / 1e9:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
