"""GPU validation of Step1 on vLLM against our native engine — for one H100/H200. **Skipped without a CUDA GPU.**

Never run on the build machines (no GPU there). Nothing in the README claims its numbers until it has run.

For each random checkpoint (written here, published layout + our ``configuration_step1.py``):
  tiny  hidden 256,  4 heads (head_dim 64), 2 groups,  2 layers
  mid   hidden 2048, 16 heads (head_dim 128), 4 groups, 12 layers   (the Chat model's head_dim)
  tts   hidden 3072, 48 heads (head_dim 64), 4 groups,  4 layers    (the TTS-3B geometry, fewer layers)
it reports
  1. logits: vLLM (TRITON_ATTN, ALiBi-sqrt, bf16) greedy-decodes 64 steps returning its raw top-20 logits per step;
     our model re-runs prompt + those ids in one forward (bf16, and fp32 as the reference) and the max |Δ| over the
     returned ids is printed next to our own bf16-vs-fp32 |Δ| (the bf16 noise floor);
  2. greedy ids: 8 prompts × 64 steps, native engine vs the vLLM adapter (``VllmEngine``), first divergent step;
  3. tokens/s at batch 1 / 8 / 32 (128 new ids per request, stop id disallowed so every request runs to length).

Setup on the GPU machine (CUDA torch + vLLM, not the CPU wheels of .venv-vllm)::

    python -m venv /tmp/v && /tmp/v/bin/pip install vllm && /tmp/v/bin/pip install -e . --no-deps
    /tmp/v/bin/pip install sentencepiece safetensors protobuf
    /tmp/v/bin/python bench/gpu_vllm_step1.py --out /tmp/gpu_vllm_step1.json [--sizes tiny mid tts]

Each size starts one vLLM engine (CUDA graph capture included); --sizes tiny mid keeps a short device lease short.

Exit status: 0 when every check passed or the script was skipped, 1 when a check failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

STEPS = 64
MAX_MODEL_LEN = 2048  # both engines: prompts up to 513 ids + 128 new fit; the native KV cache stays small
TOP_LOGITS = 20
THROUGHPUT_NEW_TOKENS = 128
BATCHES = (1, 8, 32)
PROMPT_LENGTHS = (7, 31, 64, 100, 130, 257, 400, 513)
AUDIO_ONLY = ((65536, 70656),)  # no stop id: every throughput request runs to max_new_tokens
SIZES = {
    "tiny": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_attention_groups=2, num_hidden_layers=2),
    "mid": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_attention_groups=4, num_hidden_layers=12),
    "tts": dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=48, num_attention_groups=4, num_hidden_layers=4),
}


def write_checkpoint(root: Path, size: str) -> Path:
    from stepaudio.llm.config import Step1Config
    from stepaudio.testing.llm import (
        _TOKENIZER_CONFIG,
        MAX_SEQ_LEN,
        VOCAB_SIZE,
        build_tiny_spm,
        write_step1_folder,
    )

    config = Step1Config(vocab_size=VOCAB_SIZE, max_seq_len=MAX_SEQ_LEN, **SIZES[size])
    folder = root / size
    write_step1_folder(folder, config, seed=1234, tokenizer_config=_TOKENIZER_CONFIG, spm=build_tiny_spm())
    return folder


def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(5, 65536, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def greedy(max_new_tokens: int = STEPS, **changes):
    from stepaudio.llm.sampling import SamplingParams

    return SamplingParams(temperature=0, max_new_tokens=max_new_tokens, repetition_threshold=0, **changes)


def throughput(engine, batch: int) -> float:
    from stepaudio.llm.engine import GenerationRequest

    requests = [
        GenerationRequest(prompts()[i % len(PROMPT_LENGTHS)], greedy(THROUGHPUT_NEW_TOKENS, allowed_token_ranges=AUDIO_ONLY))
        for i in range(batch)
    ]
    engine.generate(requests[:1])  # warm-up (CUDA graphs, kernels)
    start = time.perf_counter()
    outputs = engine.generate(requests)
    elapsed = time.perf_counter() - start
    return sum(len(ids) for ids in outputs) / elapsed


def native_stage(folder: Path) -> dict:
    from stepaudio.llm.engine import GenerationRequest, TorchStep1Engine

    with TorchStep1Engine.from_checkpoint(
        folder, dtype="bf16", device="cuda", max_batch_size=max(BATCHES), max_seq_len=MAX_MODEL_LEN
    ) as engine:
        ids = engine.generate([GenerationRequest(p, greedy()) for p in prompts()])
        speed = {batch: throughput(engine, batch) for batch in BATCHES}
    return {"greedy_ids": ids, "tokens_per_s": speed}


def vllm_stage(folder: Path, gpu_memory_utilization: float) -> dict:
    from vllm import SamplingParams as VllmSamplingParams

    from stepaudio.llm.engine import GenerationRequest
    from stepaudio.llm.engine_config import LLMEngineOptions
    from stepaudio.llm.vllm_engine import VllmEngine

    options = LLMEngineOptions(engine="vllm", max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=gpu_memory_utilization)
    result = {}
    with VllmEngine.from_checkpoint(folder, options, dtype="bfloat16", max_batch_size=max(BATCHES), logprobs_mode="raw_logits") as engine:
        result["greedy_ids"] = engine.generate([GenerationRequest(p, greedy()) for p in prompts()])
        result["tokens_per_s"] = {batch: throughput(engine, batch) for batch in BATCHES}
        # Raw logits of vLLM's top ids per decode step, through AsyncLLM directly (the adapter streams ids only).
        params = VllmSamplingParams(temperature=0, max_tokens=STEPS, logprobs=TOP_LOGITS, ignore_eos=True, detokenize=False)
        result["top_logits"] = [engine.top_logprobs(p, params) for p in prompts()[:3]]
    return result


def logits_delta(folder: Path, prompt: list[int], steps: list[dict[int, float]]) -> tuple[float, float]:
    """(max |vLLM − ours fp32|, max |ours bf16 − ours fp32|) over the ids vLLM returned, all steps."""
    from stepaudio.llm.weights import load_step1

    generated = [max(step, key=step.get) for step in steps]
    context = torch.tensor([prompt + generated[:-1]], device="cuda")
    rows = slice(len(prompt) - 1, len(prompt) - 1 + len(steps))
    logits = {}
    for dtype in ("fp32", "bf16"):
        model = load_step1(folder, dtype=dtype, device="cuda")
        with torch.inference_mode():
            logits[dtype] = model(context)[0, rows].float().cpu()
        del model
        torch.cuda.empty_cache()
    vllm_delta = ours_delta = 0.0
    for row, step in enumerate(steps):
        ids = torch.tensor(list(step))
        theirs = torch.tensor(list(step.values()))
        vllm_delta = max(vllm_delta, float((theirs - logits["fp32"][row, ids]).abs().max()))
        ours_delta = max(ours_delta, float((logits["bf16"][row, ids] - logits["fp32"][row, ids]).abs().max()))
    return vllm_delta, ours_delta


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for step, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return step
    return None if len(a) == len(b) else min(len(a), len(b))


def run_size(root: Path, size: str, gpu_memory_utilization: float) -> dict:
    folder = write_checkpoint(root, size)
    native = native_stage(folder)
    gc.collect()
    torch.cuda.empty_cache()
    vllm = vllm_stage(folder, gpu_memory_utilization)
    deltas = [logits_delta(folder, p, steps) for p, steps in zip(prompts(), vllm["top_logits"])]
    divergence = [first_divergence(a, b) for a, b in zip(native["greedy_ids"], vllm["greedy_ids"])]
    report = {
        "size": size,
        "dims": SIZES[size],
        "logits_max_abs_delta_vllm_bf16_vs_fp32": max(d[0] for d in deltas),
        "logits_max_abs_delta_ours_bf16_vs_fp32": max(d[1] for d in deltas),
        "greedy_first_divergent_step": divergence,
        "greedy_identical": all(d is None for d in divergence),
        "tokens_per_s_native": native["tokens_per_s"],
        "tokens_per_s_vllm": vllm["tokens_per_s"],
    }
    print(json.dumps(report), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "mid", "tts"])
    parser.add_argument("--out", type=Path, help="write the reports here as JSON")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA GPU — this script validates vLLM Step1 on a GPU only; nothing was measured")
        return 0
    print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        reports = [run_size(Path(tmp), size, args.gpu_memory_utilization) for size in args.sizes]
    if args.out:
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "reports": reports}, indent=2) + "\n")
    # bf16 on both sides: vLLM's |Δ| to fp32 should be of the order of our own bf16 |Δ| (4× allows kernel order).
    ok = all(r["greedy_identical"] for r in reports) and all(
        r["logits_max_abs_delta_vllm_bf16_vs_fp32"] <= 4 * max(r["logits_max_abs_delta_ours_bf16_vs_fp32"], 1e-2)
        for r in reports
    )
    print("PASSED" if ok else "FAILED: see the reports above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
