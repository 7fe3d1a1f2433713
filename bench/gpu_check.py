"""The ready GPU check: the library at real size with random weights, PyTorch with CUDA only (no Triton, TensorRT or
onnxruntime-gpu: what a lent GPU machine has). One JSON file and a printed table.

    python bench/gpu_check.py --out build/bench/gpu_check.json            # real size, CUDA; < 8 min on one H100
    python bench/gpu_check.py --dry-run --out /tmp/gpu_check.json         # the same code, tiny sizes, CPU, seconds

Measures
1. Step1 TTS-3B (published config.json values) decode tokens/s in bf16 at batch 1, 8, 32: a prompt of
   ``--context`` ids prefilled per row, then ``--steps`` single-id steps of every row (argmax of the last logits),
   timed between CUDA synchronisations; tokens/s = batch × steps / time.
2. token2wav seconds per 10 s of speech: the published decoder dims, bf16 flow and float32 HiFT (``Token2Wav``, as
   the reference runs them), batch 1, a 3 s voice prompt (bench/token2wav_requests.py); best of ``--repeats``.
3. Streaming first-audio latency at 1 and 8 concurrent streams: from the start of the prefill to each stream's first
   wave chunk, with the LLM decoding all streams in one batch and each stream's ids fed as they come to its
   ``SpeechStream`` (the served schedule: first chunk 25 ids + 20 lookahead) on the same GPU.

Random weights give random ids, so the speech is noise; the work per id is the real one. Measured numbers belong in
README / docs/gpu.md with the card named (the JSON carries the device name and the library versions).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.token2wav_requests import requests_for, run  # noqa: E402
from stepaudio.decoder import DecoderNoise, Token2Wav, Token2WavStream  # noqa: E402
from stepaudio.decoder.config import DecoderConfig  # noqa: E402
from stepaudio.llm.config import Step1Config  # noqa: E402
from stepaudio.llm.model import Step1ForCausalLM  # noqa: E402
from stepaudio.testing.decoder import tiny_config, write_decoder_dir  # noqa: E402
from stepaudio.tokenizer.ids import AUDIO_ID_END, AUDIO_ID_OFFSET  # noqa: E402
from stepaudio.tts.streaming import ChunkSchedule, SpeechStream  # noqa: E402

# docs/checkpoints.md / reference Appendix D: the published Step-Audio-TTS-3B config.json.
TTS_3B = Step1Config(hidden_size=3072, intermediate_size=8192, num_attention_heads=48, num_attention_groups=4,
                     num_hidden_layers=32, vocab_size=74752, max_seq_len=32768, torch_dtype="bfloat16")
TINY_LLM = Step1Config(hidden_size=64, intermediate_size=128, num_attention_heads=8, num_attention_groups=2,
                       num_hidden_layers=2, vocab_size=74752, max_seq_len=4096, torch_dtype="float32")


@dataclass(frozen=True)
class CheckSizes:
    llm: Step1Config
    decoder: DecoderConfig
    device: str
    llm_dtype: torch.dtype
    flow_dtype: torch.dtype
    batches: tuple[int, ...]
    streams: tuple[int, ...]
    context: int
    steps: int
    speech_seconds: float
    repeats: int

    @classmethod
    def real(cls, args) -> CheckSizes:
        return cls(TTS_3B, DecoderConfig(), "cuda", torch.bfloat16, torch.bfloat16, tuple(args.batches),
                   tuple(args.streams), args.context, args.steps, 10.0, args.repeats)

    @classmethod
    def dry(cls, args) -> CheckSizes:
        # float32 on CPU: the code path is the same; bf16 CPU kernels only add minutes here.
        return cls(TINY_LLM, tiny_config(), "cpu", torch.float32, torch.float32, (1, 2), (1, 2), 16, 4, 2.0, 1)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_llm(config: Step1Config, device: str, dtype: torch.dtype) -> Step1ForCausalLM:
    """A random Step1 model built directly in ``dtype`` on ``device`` (no float32 copy of 3.5 B weights)."""
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = Step1ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


@torch.inference_mode()
def llm_decode(model: Step1ForCausalLM, batch: int, context: int, steps: int, device: str) -> dict:
    cache = model.new_cache(num_slots=batch, max_len=context + steps + 1)
    slots = list(range(batch))
    prompt = torch.randint(0, 65536, (batch, context), device=device)
    positions = torch.arange(context, device=device).expand(batch, context)
    ids = model(prompt, positions, cache, slots)[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    start = time.perf_counter()
    for step in range(steps):
        position = torch.full((batch, 1), context + step, device=device)
        ids = model(ids, position, cache, slots)[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"batch": batch, "context": context, "steps": steps, "seconds": elapsed,
            "tokens_per_s": batch * steps / elapsed, "ms_per_step": 1000 * elapsed / steps}


def token2wav_cost(decoder: Token2Wav, seconds: float, repeats: int) -> dict:
    requests = requests_for(1, seconds)
    for request in requests:
        request.validate(decoder.config)
    noises = [DecoderNoise.from_seed(0, r.prompt_mel.shape[0], r.tokens.size, decoder.config) for r in requests]
    run(decoder, requests, noises)  # warm-up: kernels, allocator
    runs = [run(decoder, requests, noises) for _ in range(repeats)]
    flow_s, vocoder_s, waves = min(runs, key=lambda r: r[0] + r[1])
    produced = waves[0].size / decoder.sample_rate
    scale = 10.0 / produced
    return {"speech_seconds": produced, "flow_s": flow_s, "vocoder_s": vocoder_s,
            "seconds_per_10s": (flow_s + vocoder_s) * scale, "flow_s_per_10s": flow_s * scale,
            "vocoder_s_per_10s": vocoder_s * scale}


@torch.inference_mode()
def first_audio(model: Step1ForCausalLM, decoder: Token2Wav, streams: int, context: int, device: str,
                max_steps: int = 400) -> dict:
    """LLM stream → first token2wav chunk for ``streams`` concurrent utterances (one decode batch)."""
    prompt_request = requests_for(1, 1.0, seed=1)[0]
    schedule = ChunkSchedule()
    speech = [SpeechStream(Token2WavStream(decoder, prompt_request.prompt_tokens, prompt_request.prompt_mel,
                                           prompt_request.speaker_embedding, seed=i), schedule)
              for i in range(streams)]
    cache = model.new_cache(num_slots=streams, max_len=context + max_steps + 1)
    slots = list(range(streams))
    prompt = torch.randint(0, 65536, (streams, context), device=device)
    first: dict[int, float] = {}
    samples: dict[int, int] = {}
    _sync(device)
    start = time.perf_counter()
    logits = model(prompt, torch.arange(context, device=device).expand(streams, context), cache, slots)
    for step in range(max_steps):
        # Audio ids only, as the served tts_llm restricts sampling (allowed_token_ranges).
        ids = logits[:, -1, AUDIO_ID_OFFSET:AUDIO_ID_END].argmax(-1) + AUDIO_ID_OFFSET
        host = ids.cpu().numpy()
        for index, stream in enumerate(speech):
            if index in first:
                continue
            chunk = stream.feed(host[index:index + 1])
            if chunk.size:
                first[index], samples[index] = time.perf_counter() - start, int(chunk.size)
        if len(first) == streams:
            break
        position = torch.full((streams, 1), context + step, device=device)
        logits = model(ids[:, None], position, cache, slots)
    if len(first) < streams:
        raise RuntimeError(f"only {len(first)} of {streams} streams produced audio within {max_steps} ids")
    latencies = [first[i] for i in range(streams)]
    return {"streams": streams, "context": context, "first_audio_s": latencies,
            "mean_s": statistics.fmean(latencies), "max_s": max(latencies),
            "first_chunk_seconds": samples[0] / decoder.sample_rate, "ids_to_first_chunk": step + 1}


def check(sizes: CheckSizes, work_dir: Path) -> dict:
    started = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(0) if sizes.device == "cuda" else platform.processor() or "cpu",
                    "torch": torch.__version__, "cuda": torch.version.cuda, "dry_run": sizes.device == "cpu",
                    "llm_dtype": str(sizes.llm_dtype).removeprefix("torch."),
                    "flow_dtype": str(sizes.flow_dtype).removeprefix("torch."), "hift_dtype": "float32"}
    model = build_llm(sizes.llm, sizes.device, sizes.llm_dtype)
    report["llm_parameters"] = sum(p.numel() for p in model.parameters())
    report["llm_decode"] = [llm_decode(model, b, sizes.context, sizes.steps, sizes.device) for b in sizes.batches]
    decoder_dir = work_dir / "decoder"
    write_decoder_dir(decoder_dir, sizes.decoder, seed=0)
    decoder = Token2Wav.from_checkpoint(decoder_dir, device=sizes.device, dtype=sizes.flow_dtype)
    report["token2wav"] = token2wav_cost(decoder, sizes.speech_seconds, sizes.repeats)
    report["streaming"] = [first_audio(model, decoder, s, sizes.context, sizes.device) for s in sizes.streams]
    if sizes.device == "cuda":
        report["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / (1 << 30)
    report["wall_s"] = time.perf_counter() - started
    return report


def table(report: dict) -> str:
    lines = [f"GPU check on {report['device']} (torch {report['torch']}, CUDA {report['cuda']})"
             + (" — DRY RUN, tiny sizes on CPU: not a measurement" if report["dry_run"] else ""),
             f"Step1 TTS decode ({report['llm_parameters'] / 1e9:.2f} B parameters, {report['llm_dtype']}):",
             f"  {'batch':>5} {'tokens/s':>10} {'ms/step':>8}"]
    lines += [f"  {r['batch']:>5} {r['tokens_per_s']:>10.1f} {r['ms_per_step']:>8.2f}" for r in report["llm_decode"]]
    t2w = report["token2wav"]
    lines.append(f"token2wav ({report['flow_dtype']} flow, float32 HiFT): {t2w['seconds_per_10s']:.3f} s per 10 s of "
                 f"speech (flow {t2w['flow_s_per_10s']:.3f}, HiFT {t2w['vocoder_s_per_10s']:.3f})")
    lines.append("streaming first audio (LLM stream → first token2wav chunk):")
    lines += [f"  {r['streams']:>2} streams: mean {r['mean_s'] * 1000:.0f} ms, max {r['max_s'] * 1000:.0f} ms "
              f"({r['ids_to_first_chunk']} ids, first chunk {r['first_chunk_seconds']:.2f} s)" for r in report["streaming"]]
    lines.append(f"wall {report['wall_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (the test runs this)")
    parser.add_argument("--out", type=Path, default=Path("build/bench/gpu_check.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--context", type=int, default=256, help="prompt ids per row before decoding")
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps per batch size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run for the CPU code check)", file=sys.stderr)
        return 2
    sizes = CheckSizes.dry(args) if args.dry_run else CheckSizes.real(args)
    with tempfile.TemporaryDirectory() as work:
        report = check(sizes, Path(work))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
