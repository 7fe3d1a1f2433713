"""Per-chunk cost of streaming token2wav along a long stream: chunk 1 vs chunk 40 (and every chunk in between).

    python bench/bench_stream_chunks.py [--decoder-dir DIR] [--chunks 40] [--threads 2] [--backend torch|onnx]

Without ``--decoder-dir`` a tiny random decoder is written to ``build/bench/decoder_tiny`` (its graphs are cheap, so
the stream's own bookkeeping — noise, phase, windows — is what the numbers show). Feeds ``chunk_tokens`` ids per
call with the stream defaults and times each call, split into time inside the two graphs (flow + vocoder) and the
rest. For scale it also times what the previous implementation redrew per chunk at the last chunk (flow noise and
source noise from sample 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepaudio.checkpoints import layout  # noqa: E402
from stepaudio.decoder import OnnxToken2Wav, Token2Wav, flow_noise, source_noise  # noqa: E402
from stepaudio.decoder.checkpoint import load_config  # noqa: E402
from stepaudio.testing.decoder import tiny_config, write_decoder_dir  # noqa: E402


def timed(decoder):
    """Wrap the decoder's two graph runners so the seconds spent in them add up in ``decoder.graph_seconds``."""
    decoder.graph_seconds = 0.0
    for name in ("run_flow", "run_vocoder"):
        inner = getattr(decoder, name)

        def run(feeds, inner=inner):
            start = time.perf_counter()
            try:
                return inner(feeds)
            finally:
                decoder.graph_seconds += time.perf_counter() - start

        setattr(decoder, name, run)
    return decoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder-dir", type=Path)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    decoder_dir = args.decoder_dir or Path("build/bench/decoder_tiny")
    if not (decoder_dir / layout.FLOW_WEIGHTS).exists():
        write_decoder_dir(decoder_dir, tiny_config(), seed=0)
    if args.backend == "onnx":
        decoder = OnnxToken2Wav.from_checkpoint(decoder_dir, threads=args.threads)
    else:
        decoder = Token2Wav.from_checkpoint(decoder_dir)
    config = load_config(decoder_dir)
    timed(decoder)
    rng = np.random.default_rng(0)
    n_prompt_frames = int(3.0 * 22050) // 256
    voice = (rng.integers(0, 5120, 125), rng.standard_normal((n_prompt_frames, 80)).astype(np.float32) - 5,
             rng.standard_normal(192).astype(np.float32))
    stream = decoder.stream(*voice, seed=1)
    chunk = stream.chunk_tokens
    tokens = rng.integers(0, 5120, chunk * (args.chunks + 2))
    rows = []
    stream.feed(tokens[: stream.lookahead_tokens])
    for i in range(args.chunks):
        decoder.graph_seconds = 0.0
        start = time.perf_counter()
        audio = stream.feed(tokens[stream.lookahead_tokens + i * chunk : stream.lookahead_tokens + (i + 1) * chunk])
        total = time.perf_counter() - start
        rows.append((i + 1, total, decoder.graph_seconds, audio.size / config.hift.sampling_rate))
    stream.finish()

    frames = stream.committed_frames
    start = time.perf_counter()
    flow_noise(1, n_prompt_frames + frames, config.flow.output_size)
    source_noise(1, frames * config.hift.samples_per_frame, config.hift.n_harmonic_channels)
    redraw = time.perf_counter() - start

    print(f"streaming token2wav, {decoder_dir}, backend {args.backend}, {args.threads} threads, "
          f"{chunk} ids per chunk (lookahead {stream.lookahead_tokens}, window ≤ {stream.max_window_tokens} ids)")
    print(f"{'chunk':>6}{'total ms':>10}{'graphs ms':>11}{'other ms':>10}{'audio s':>9}")
    for index, total, graphs, audio in rows:
        if index in (1, 2, 5, 10, 20, 30, 40) or index == len(rows):
            print(f"{index:>6}{1e3 * total:>10.1f}{1e3 * graphs:>11.1f}{1e3 * (total - graphs):>10.1f}{audio:>9.2f}")
    late = [r for r in rows if r[0] > len(rows) - 10]
    print(f"median of the last 10 chunks: total {1e3 * np.median([r[1] for r in late]):.1f} ms, "
          f"outside the graphs {1e3 * np.median([r[1] - r[2] for r in late]):.1f} ms")
    print(f"redrawing both noises from sample 0 at chunk {len(rows)} (the previous per-chunk cost): {1e3 * redraw:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
