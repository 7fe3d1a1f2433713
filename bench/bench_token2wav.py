"""Token2wav real-time factor at the published size: PyTorch eager vs ONNX Runtime, batch 1 and 4.

    python bench/bench_token2wav.py [--decoder-dir DIR] [--threads 2] [--seconds 10] [--repeats 2]
    python bench/bench_token2wav.py --decoder-dir DIR --baseline-dir OLD [--repeats 5]

With ``--baseline-dir`` (a decoder folder holding older exports of the same weights, e.g. made from a checkout of
main) only the ONNX graphs run: a plain fp32 matmul (torch, ``--threads``), the baseline graphs and the current ones
take turns ``--repeats`` times on one batch-1 request, and the report gives each one's time, its share of the matmul
peak for the request's FLOPs (counted with attention, bench/flops.py: 3611 GFLOP for 10 s at real size) and the per-turn
speed ratio — the number to trust on a shared machine, since both sides see the same load.

Without ``--decoder-dir`` a real-size random-weight decoder folder is written to ``build/bench/decoder`` (flow
105.4 M, HiFT 20.5 M parameters, as the published files). Missing ``flow_decoder.onnx`` / ``vocoder.onnx`` are
exported next to the weights first (several minutes at real size). Each request is ``--seconds`` of target speech
(41.667 ids/s) with a 3 s voice prompt; RTF = wall time / seconds of audio produced (all rows of the batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.flops import request_gflop  # noqa: E402
from bench.sgemm import sgemm_gflops  # noqa: E402
from bench.token2wav_requests import PROMPT_SECONDS, requests_for, run  # noqa: E402
from export.flow_onnx import export_flow_onnx  # noqa: E402
from export.vocoder_onnx import export_vocoder_onnx  # noqa: E402
from stepaudio.checkpoints import layout  # noqa: E402
from stepaudio.decoder import DecoderNoise, OnnxToken2Wav, Token2Wav  # noqa: E402
from stepaudio.decoder.config import DecoderConfig  # noqa: E402
from stepaudio.testing.decoder import write_decoder_dir  # noqa: E402


def compare_onnx(decoder_dir: Path, baseline_dir: Path, threads: int, seconds: float, repeats: int, gflop: float) -> None:
    """Interleaved sgemm / baseline ONNX / current ONNX turns on one request; prints times, peak shares, ratios."""
    decoders = {
        "baseline": OnnxToken2Wav.from_checkpoint(baseline_dir, threads=threads),
        "current": OnnxToken2Wav.from_checkpoint(decoder_dir, threads=threads),
    }
    config = decoders["current"].config
    requests = requests_for(1, seconds)
    for r in requests:
        r.validate(config)
    noises = [DecoderNoise.from_seed(0, r.prompt_mel.shape[0], r.tokens.size, config) for r in requests]
    work = gflop or request_gflop(Token2Wav.from_checkpoint(decoder_dir), seconds)
    waves = {name: run(decoder, requests, noises)[2] for name, decoder in decoders.items()}  # warm-up
    gap = max(float(np.abs(a - b).max()) for a, b in zip(*waves.values()))
    print(f"load average before: {os.getloadavg()}")
    print(f"{seconds:g} s of speech + {PROMPT_SECONDS:g} s prompt, batch 1, {threads} threads; {work:.0f} GFLOP per run")
    print(f"{'turn':>4}{'sgemm GF/s':>12}{'baseline s':>12}{'current s':>11}{'ratio':>8}{'% peak b/c':>13}  load")
    peaks, totals, ratios = [], {name: [] for name in decoders}, []
    for turn in range(repeats):
        peaks.append(sgemm_gflops(threads))
        for name, decoder in decoders.items():
            flow_s, vocoder_s, _ = run(decoder, requests, noises)
            totals[name].append(flow_s + vocoder_s)
        base, cur = totals["baseline"][-1], totals["current"][-1]
        ratios.append(base / cur)
        shares = [100 * work / t / peaks[-1] for t in (base, cur)]
        print(f"{turn:>4}{peaks[-1]:>12.0f}{base:>12.2f}{cur:>11.2f}{ratios[-1]:>8.2f}"
              f"{shares[0]:>7.0f}/{shares[1]:.0f}  {os.getloadavg()[0]:.1f}")
    peak = max(peaks)
    best = {name: min(t) for name, t in totals.items()}
    print(f"best of {repeats}: sgemm {peak:.0f} GFLOP/s; baseline {best['baseline']:.2f} s "
          f"({100 * work / best['baseline'] / peak:.0f} % of peak), current {best['current']:.2f} s "
          f"({100 * work / best['current'] / peak:.0f} % of peak); ratio of bests {best['baseline'] / best['current']:.2f}, "
          f"median per-turn ratio {float(np.median(ratios)):.2f}")
    print(f"max |wave(baseline) − wave(current)| = {gap:.2e}; load average after: {os.getloadavg()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder-dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--baseline-dir", type=Path, help="compare the ONNX graphs with this folder's (see above)")
    parser.add_argument("--gflop", type=float, help="GFLOP of one request (default: counted, bench/flops.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.baseline_dir:
        compare_onnx(args.decoder_dir or Path("build/bench/decoder"), args.baseline_dir, args.threads, args.seconds,
                     args.repeats, args.gflop)
        return 0

    decoder_dir = args.decoder_dir or Path("build/bench/decoder")
    if not (decoder_dir / layout.FLOW_WEIGHTS).exists():
        print(f"writing a real-size random decoder to {decoder_dir}", flush=True)
        write_decoder_dir(decoder_dir, DecoderConfig(), seed=0)
    for name, export in ((layout.FLOW_DECODER_ONNX, export_flow_onnx), (layout.VOCODER_ONNX, export_vocoder_onnx)):
        if not (decoder_dir / name).exists():
            start = time.perf_counter()
            export(decoder_dir)
            print(f"exported {name} in {time.perf_counter() - start:.0f} s", flush=True)

    decoders = {
        "pytorch eager": Token2Wav.from_checkpoint(decoder_dir),
        "onnxruntime": OnnxToken2Wav.from_checkpoint(decoder_dir, threads=args.threads),
    }
    config = decoders["pytorch eager"].config
    request_work = args.gflop or request_gflop(decoders["pytorch eager"], args.seconds)

    print(f"\nToken2wav, {args.seconds:g} s of speech per request (+{PROMPT_SECONDS:g} s prompt), {args.threads} threads;"
          f" load average {os.getloadavg()}")
    print(f"{'backend':<14}{'batch':>6}{'flow s':>10}{'vocoder s':>11}{'total s':>10}{'RTF':>8}"
          f"{'sgemm GF/s':>12}{'% of it':>9}")
    for batch in args.batches:
        requests = requests_for(batch, args.seconds)
        for r in requests:
            r.validate(config)
        noises = [DecoderNoise.from_seed(i, r.prompt_mel.shape[0], r.tokens.size, config) for i, r in enumerate(requests)]
        audio_seconds = batch * 256 * config.flow.mel_frames_for_tokens(requests[0].tokens.size) / 22050
        waves = {}
        for backend, decoder in decoders.items():
            run(decoder, requests, noises)  # warm-up
            peak = sgemm_gflops(args.threads)  # the same threads' matmul peak, measured next to this backend's runs
            timings = [run(decoder, requests, noises) for _ in range(args.repeats)]
            flow_s, vocoder_s = (float(np.median([t[i] for t in timings])) for i in (0, 1))
            waves[backend] = timings[-1][2]
            total = flow_s + vocoder_s
            work = batch * request_work
            print(f"{backend:<14}{batch:>6}{flow_s:>10.2f}{vocoder_s:>11.2f}{total:>10.2f}{total / audio_seconds:>8.3f}"
                  f"{peak:>12.0f}{100 * work / total / peak:>9.0f}")
        gap = max(float(np.abs(a - b).max()) for a, b in zip(*waves.values()))
        print(f"{'':<14}{batch:>6}  max |wave(pytorch) − wave(onnxruntime)| = {gap:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
