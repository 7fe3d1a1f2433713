"""Step1 decode cost per token: the engine's incremental ALiBi-sqrt row vs the reference fallback, which rebuilds
the full (heads, L, L) bias in every layer at every step and repeats K/V per head (docs/reference-notes.md#fixed-on-purpose).

Mid-size random model (hidden 1024, 8 layers, 16 heads / 4 KV groups, real 74752 vocab), batch 1, fp32 on CPU.
The KV cache is filled with random keys/values up to the context length (decode cost does not depend on their
values), then single-token steps are timed. Both paths are checked to give the same logits.

    .venv/bin/python bench/bench_llm_decode.py [--contexts 256 1024 2048] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from stepaudio.llm.config import Step1Config
from stepaudio.llm.model import KVCache, Step1ForCausalLM, alibi_slopes, alibi_sqrt_bias

CONFIG = Step1Config(
    hidden_size=1024,
    intermediate_size=2816,
    num_attention_heads=16,
    num_attention_groups=4,
    num_hidden_layers=8,
    vocab_size=74752,
    max_seq_len=4096,
    torch_dtype="float32",
)


def incremental_step(model: Step1ForCausalLM, cache: KVCache, token: int, position: int) -> torch.Tensor:
    return model(torch.tensor([[token]]), torch.tensor([[position]]), cache, [0])[0, -1]


def reference_step(model: Step1ForCausalLM, cache: KVCache, token: int, position: int) -> torch.Tensor:
    """The reference fallback's per-layer work, on the same cache: full L×L bias each layer, last row sliced."""
    config = model.config
    heads, groups, head_dim = config.num_attention_heads, config.num_attention_groups, config.head_dim
    length = position + 1
    x = model.model.embed_tokens(torch.tensor([[token]]))
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, 1, heads, head_dim).transpose(1, 2)
        cache.keys[index][0, position] = attn.k_proj(h).view(groups, head_dim)
        cache.values[index][0, position] = attn.v_proj(h).view(groups, head_dim)
        k = cache.keys[index][:1, :length].repeat_interleave(heads // groups, dim=2).transpose(1, 2)
        v = cache.values[index][:1, :length].repeat_interleave(heads // groups, dim=2).transpose(1, 2)
        slopes = alibi_slopes(heads)
        full_bias = alibi_sqrt_bias(slopes, torch.arange(length)[None], length, x.dtype)  # [1, H, L, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=full_bias[:, :, -1:, :].contiguous())
        x = x + attn.o_proj(out.transpose(1, 2).reshape(1, 1, heads * head_dim))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))[0, -1]


def time_steps(step, model, cache, context: int, steps: int) -> tuple[float, torch.Tensor]:
    """Median ms over ``steps`` decode steps starting at position ``context`` (after one warm-up step)."""
    times = []
    first_logits = None
    for i in range(steps + 1):
        start = time.perf_counter()
        logits = step(model, cache, token=1000 + i, position=context + i)
        elapsed = time.perf_counter() - start
        if i == 0:
            first_logits = logits
        else:
            times.append(elapsed * 1000)
    return statistics.median(times), first_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--steps", type=int, default=20, help="timed steps for the incremental path")
    parser.add_argument("--reference-steps", type=int, default=4, help="timed steps for the reference path")
    # One thread by default: on the shared 2-core build machine a second OpenMP thread mostly waits for a core.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with torch.inference_mode():
        model = Step1ForCausalLM(CONFIG).eval()
        rows = []
        for context in args.contexts:
            cache = model.new_cache(num_slots=1, max_len=CONFIG.max_seq_len)
            cache.ensure_capacity(context + max(args.steps, args.reference_steps) + 1)
            for layer_keys, layer_values in zip(cache.keys, cache.values):
                layer_keys[0, :context].normal_()
                layer_values[0, :context].normal_()
            ours_ms, ours_logits = time_steps(incremental_step, model, cache, context, args.steps)
            ref_ms, ref_logits = time_steps(reference_step, model, cache, context, args.reference_steps)
            difference = float((ours_logits - ref_logits).abs().max())
            rows.append((context, ours_ms, ref_ms, ref_ms / ours_ms, difference))

    print(f"Step1 decode, batch 1, fp32, {args.threads} threads: hidden {CONFIG.hidden_size}, "
          f"{CONFIG.num_hidden_layers} layers, {CONFIG.num_attention_heads} heads / {CONFIG.num_attention_groups} groups")
    print(f"{'context':>8} {'incremental ms/tok':>19} {'reference ms/tok':>17} {'ratio':>7} {'max |Δlogit|':>13}")
    for context, ours_ms, ref_ms, ratio, difference in rows:
        print(f"{context:>8} {ours_ms:>19.1f} {ref_ms:>17.1f} {ratio:>6.1f}x {difference:>13.2e}")


if __name__ == "__main__":
    main()
