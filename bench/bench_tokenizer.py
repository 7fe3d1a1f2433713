"""Tokenizer real-time factor on CPU at the published dims (random weights): vq02 encoder torch vs ONNX Runtime.

    .venv/bin/python -m bench.bench_tokenizer [--checkpoints DIR] [--seconds 10] [--threads 1] [--repeat 3]

Without ``--checkpoints`` a real-size tokenizer tree (Paraformer 50 × 512, vq06 6 × 1280) is written once to
``build/bench/tokenizer-real`` and its vq02 chunk step exported to ONNX. The input is the English test clip looped to
the requested length. RTF = processing seconds / audio seconds (lower is better; < 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from export.tokenizer_onnx import export_vq02_encoder
from stepaudio.audio import load_audio
from stepaudio.checkpoints import layout
from stepaudio.testing.tokenizer import write_tokenizer
from stepaudio.tokenizer import AudioTokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINTS = ROOT / "build" / "bench" / "tokenizer-real"


def prepare(checkpoints: Path) -> Path:
    tokenizer_dir = checkpoints / layout.TOKENIZER_DIR
    onnx_path = tokenizer_dir / layout.PARAFORMER_DIR / layout.VQ02_ENCODER_ONNX
    if not (tokenizer_dir / layout.SEMANTIC_TOKENIZER_ONNX).is_file():
        started = time.perf_counter()
        write_tokenizer(checkpoints, "real", seed=0)
        print(f"wrote real-size tokenizer checkpoint in {time.perf_counter() - started:.0f} s")
    if not onnx_path.is_file():
        started = time.perf_counter()
        export_vq02_encoder(tokenizer_dir)
        print(f"exported vq02 chunk step ({onnx_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s")
    return tokenizer_dir


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(tokenizer: AudioTokenizer, wave: np.ndarray, rate: int, repeat: int) -> tuple[float, ...]:
    """Best-of-``repeat`` seconds for vq02 alone, vq06 alone, one-shot tokenize and a 240 ms-chunk stream."""
    tokenizer.tokenize(wave[:rate], rate)  # warm-up

    def vq02_only():
        stream = tokenizer.linguistic.stream()
        stream.feed(wave)
        stream.finish()

    def streamed():
        stream = tokenizer.stream(rate)
        for start in range(0, len(wave), 3840):
            stream.feed(wave[start : start + 3840])
        stream.finish()

    return (
        best_of(repeat, vq02_only),
        best_of(repeat, lambda: tokenizer.semantic.segment_codes(wave)),
        best_of(repeat, lambda: tokenizer.tokenize(wave, rate)),
        best_of(repeat, streamed),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)  # 2 threads thrash on the shared 2-core box
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer_dir = prepare(args.checkpoints)

    clip, rate = load_audio(ROOT / "tests" / "data" / "speech_en_16k.wav")
    samples = int(args.seconds * rate)
    wave = np.tile(clip, samples // len(clip) + 1)[:samples]

    rows = []
    for backend in ("torch", "onnx"):
        tokenizer = AudioTokenizer.from_checkpoint(tokenizer_dir, backend=backend, threads=args.threads)
        rows.append((backend, *measure(tokenizer, wave, rate, args.repeat)))

    print(f"\nTokenizer RTF, {args.seconds:g} s of 16 kHz audio, real dims, {args.threads} threads (best of {args.repeat})")
    header = f"{'vq02 encoder':>14} | {'vq02 (s)':>9} {'RTF':>6} | {'vq06 ONNX (s)':>13} {'RTF':>6} | " \
             f"{'tokenize (s)':>12} {'RTF':>6} | {'stream 240 ms (s)':>17} {'RTF':>6}"
    print(header)
    print("-" * len(header))
    for backend, vq02, vq06, total, stream in rows:
        print(
            f"{backend:>14} | {vq02:9.3f} {vq02 / args.seconds:6.3f} | {vq06:13.3f} {vq06 / args.seconds:6.3f} | "
            f"{total:12.3f} {total / args.seconds:6.3f} | {stream:17.3f} {stream / args.seconds:6.3f}"
        )


if __name__ == "__main__":
    main()
