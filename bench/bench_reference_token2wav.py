"""Token2wav side by side with the reference implementation: same weights, same request, same process, in turns.

    python bench/bench_reference_token2wav.py --reference-dir STEP_AUDIO_CHECKOUT [--decoder-dir DIR]
        [--seconds 10] [--repeats 3] [--threads 2] [--runners reference-fp32,onnxruntime,pytorch-fp32,...]

The reference is the public Step-Audio code (github.com/stepfun-ai/Step-Audio), from a checkout you provide; it is
never vendored here. It needs its own packages next to ours (e.g. ``pip install --target DEPS hyperpyyaml
"ruamel.yaml<0.18" omegaconf diffusers einops conformer==0.3.2 librosa scipy`` and ``--reference-deps DEPS``).
Its ``token_to_wav_offline`` is ``flow.inference`` then ``hift.inference``; this script calls the two with the
modules its ``cosyvoice.yaml`` builds, the way ``CosyVoice.__init__`` does, with two adjustments applied from
outside (no file of the checkout is edited) so that it runs on a CPU:

- ``HiFTGenerator.__init__`` puts its STFT window on CUDA (``.cuda()``): ``Tensor.cuda`` is the identity while the
  modules are built.
- ``reference-fp32``: the published ``CosyVoice`` casts the flow to bf16, and the estimator casts its first ResNet's
  inputs to bf16 whatever the weights are; a forward pre-hook casts them back, so the whole flow runs in float32
  (the configuration the performance issue measured). ``reference-bf16`` runs the flow in bf16 as published.

Runners: ``reference-fp32``, ``reference-bf16``, ``onnxruntime`` (the served graphs), ``pytorch-fp32`` (the
library's runner, the parity anchor), ``pytorch-bf16`` (its opt-in bf16 flow). Each turn measures a plain fp32
matmul first (torch, same threads), then every runner once; the report gives medians, the per-turn speed-up
against the first runner, and each runner's share of the same-run matmul peak for the request's FLOPs, counted
on our float32 runner with attention included (bench/flops.py). With ``pytorch-bf16`` it also prints the opt-in's
quality cost: mel and wave error against the float32 runner on the same request and noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_token2wav import requests_for, run  # noqa: E402
from bench.flops import token2wav_gflop  # noqa: E402
from bench.report import sgemm_gflops  # noqa: E402
from stepaudio.checkpoints import layout  # noqa: E402
from stepaudio.decoder import DecoderNoise, OnnxToken2Wav, Token2Wav, Token2WavRequest  # noqa: E402

RUNNERS = ("reference-fp32", "reference-bf16", "onnxruntime", "pytorch-fp32", "pytorch-bf16")


@contextmanager
def _cuda_is_identity():
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _float32_inputs(module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


class Reference:
    """The reference's flow + HiFT built from ``cosyvoice.yaml`` and the weights in ``decoder_dir``."""

    def __init__(self, reference_dir: Path, decoder_dir: Path, dtype: torch.dtype):
        sys.path.insert(0, str(reference_dir))
        from hyperpyyaml import load_hyperpyyaml

        with _cuda_is_identity(), open(decoder_dir / layout.DECODER_YAML) as f:
            configs = load_hyperpyyaml(f)
        self.flow, self.hift = configs["flow"], configs["hift"]
        self.flow.load_state_dict(torch.load(decoder_dir / layout.FLOW_WEIGHTS, map_location="cpu"))
        self.hift.load_state_dict(torch.load(decoder_dir / layout.HIFT_WEIGHTS, map_location="cpu"))
        self.flow.eval(), self.hift.eval()
        self.dtype = dtype
        if dtype == torch.bfloat16:
            self.flow = self.flow.to(torch.bfloat16)  # as CosyVoice.__init__
        else:
            for resnet, _, _ in self.flow.decoder.estimator.down_blocks:
                resnet.register_forward_pre_hook(_float32_inputs)

    @torch.no_grad()
    def __call__(self, request: Token2WavRequest) -> tuple[float, float]:
        def ids(values):
            return torch.from_numpy(np.asarray(values)[None]).long()

        start = time.perf_counter()
        mel = self.flow.inference(
            token=ids(request.tokens),
            token_len=torch.tensor([request.tokens.size], dtype=torch.int32),
            prompt_token=ids(request.prompt_tokens),
            prompt_token_len=torch.tensor([request.prompt_tokens.size], dtype=torch.int32),
            prompt_feat=torch.from_numpy(request.prompt_mel[None]).to(self.dtype),  # tts.py sends bf16 to a bf16 flow
            prompt_feat_len=torch.tensor([request.prompt_mel.shape[0]], dtype=torch.int32),
            embedding=torch.from_numpy(request.speaker_embedding[None]).to(self.dtype),
        )
        middle = time.perf_counter()
        self.hift.inference(mel=mel.float())
        return middle - start, time.perf_counter() - middle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", type=Path, required=True, help="a checkout of stepfun-ai/Step-Audio")
    parser.add_argument("--reference-deps", type=Path, help="a pip --target folder with the reference's packages")
    parser.add_argument("--decoder-dir", type=Path, default=Path("build/bench/decoder"),
                        help="weights + exports (bench/bench_token2wav.py writes a real-size random one)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runners", default="reference-fp32,onnxruntime,pytorch-fp32",
                        help=f"comma-separated, the first is the baseline; from {', '.join(RUNNERS)}")
    args = parser.parse_args(argv)
    names = args.runners.split(",")
    unknown = set(names) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown runners {sorted(unknown)}")
    if args.reference_deps:
        sys.path.append(str(args.reference_deps))  # after our own packages: theirs never shadow ours
    torch.set_num_threads(args.threads)

    fp32 = Token2Wav.from_checkpoint(args.decoder_dir)
    config = fp32.config
    request = requests_for(1, args.seconds)[0]
    request.validate(config)
    noise = [DecoderNoise.from_seed(0, request.prompt_mel.shape[0], request.tokens.size, config)]
    flow_gflop, vocoder_gflop = token2wav_gflop(fp32, [request], noise)

    decoders = {
        "onnxruntime": lambda: OnnxToken2Wav.from_checkpoint(args.decoder_dir, threads=args.threads),
        "pytorch-fp32": lambda: fp32,
        "pytorch-bf16": lambda: Token2Wav.from_checkpoint(args.decoder_dir, dtype=torch.bfloat16),
    }
    reference_dtypes = {"reference-fp32": torch.float32, "reference-bf16": torch.bfloat16}
    built = {name: Reference(args.reference_dir, args.decoder_dir, reference_dtypes[name])
             if name in reference_dtypes else decoders[name]() for name in names}
    runners = {name: partial(thing, request) if isinstance(thing, Reference)
               else partial(lambda decoder: run(decoder, [request], noise)[:2], thing)
               for name, thing in built.items()}
    for runner in runners.values():
        runner()  # warm-up

    print(f"{args.seconds:g} s of speech + 3 s prompt, batch 1, {args.threads} threads; work {flow_gflop:.0f} GFLOP "
          f"flow + {vocoder_gflop:.0f} vocoder (attention included)", flush=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    peaks = []
    for turn in range(args.repeats):
        peaks.append(sgemm_gflops(args.threads))
        for name, runner in runners.items():
            times[name].append(runner())
            flow_s, vocoder_s = times[name][-1]
            print(f"turn {turn} {name:<15} flow {flow_s:6.2f} s  vocoder {vocoder_s:5.2f} s  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    peak = float(np.median(peaks))
    baseline = names[0]
    print(f"\nsame-run fp32 matmul: median {peak:.0f} GFLOP/s (turns: {', '.join(f'{p:.0f}' for p in peaks)})")
    print(f"{'runner':<16}{'flow s':>8}{'vocoder s':>11}{'total s':>9}{'% of matmul':>13}  speed-up vs {baseline} per turn")
    for name, rows in times.items():
        flow_s, vocoder_s = (float(np.median([row[i] for row in rows])) for i in (0, 1))
        total = float(np.median([sum(row) for row in rows]))
        share = 100 * (flow_gflop + vocoder_gflop) / total / peak
        ratios = [sum(b) / sum(r) for b, r in zip(times[baseline], rows)]
        print(f"{name:<16}{flow_s:>8.2f}{vocoder_s:>11.2f}{total:>9.2f}{share:>12.0f}%  "
              f"median {np.median(ratios):.2f}× ({', '.join(f'{x:.2f}' for x in ratios)})")
    if "pytorch-bf16" in names:
        quality(fp32, built["pytorch-bf16"], request, noise)
    return 0


def quality(fp32: Token2Wav, bf16: Token2Wav, request: Token2WavRequest, noise: list[DecoderNoise]) -> None:
    """The opt-in bf16 flow's cost: its mel and wave against the float32 runner's, same request and noise."""
    mels = [d.token2mel([request], [noise[0].flow])[0] for d in (fp32, bf16)]
    waves = [d.mel2wav([m], [noise[0].source_phase], [noise[0].source_noise])[0] for d, m in zip((fp32, bf16), mels)]
    mel_error = np.abs(mels[1] - mels[0])
    wave_error = waves[1] - waves[0]
    snr = 10 * np.log10(np.sum(waves[0] ** 2) / np.sum(wave_error**2))
    print(f"bf16 flow vs float32: mel |Δ| mean {mel_error.mean():.4f} max {mel_error.max():.3f} (float32 mel std "
          f"{mels[0].std():.3f}); wave max |Δ| {np.abs(wave_error).max():.2e}, SNR {snr:.1f} dB")


if __name__ == "__main__":
    sys.exit(main())
