"""Concurrent streaming TTS: N ``tts_stream`` requests at once against a live server.

    python bench/bench_tts_stream.py [--model-repository build/model_repository] [--streams 8] [--max-new-tokens 150]

Starts the server on the rendered repository (``make demo`` renders ``build/model_repository``), sends one warm-up
stream, then N streams at once over gRPC (each its own seed). Prints the wall time, the aggregate real-time factor
(wall time / seconds of audio of all streams), first-chunk latency, and how many executions ``flow_decoder`` and
``vocoder`` needed for their calls (fewer executions than calls = the streams' decoder calls were batched).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.tts import synthesize  # noqa: E402
from stepaudio_server.launcher import TritonServer  # noqa: E402

TEXT = "你好，世界。今天天气很好。"
DECODER_MODELS = ("flow_decoder", "vocoder")


def stream_args(url: str, seed: int, max_new_tokens: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        text=TEXT, speaker="Tingting", prompt_wav=None, seed=seed, temperature=None, top_k=None, top_p=None,
        max_new_tokens=max_new_tokens, stream=True, protocol="grpc", url=url,
    )


def decoder_counts(url: str) -> dict[str, tuple[int, int]]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = {m: client.get_inference_statistics(m).model_stats[0] for m in DECODER_MODELS}
    finally:
        client.close()
    return {m: (s.inference_count, s.execution_count) for m, s in stats.items()}


def settled_decoder_counts(url: str, quiet_s: float = 0.3, timeout_s: float = 10.0) -> dict[str, tuple[int, int]]:
    """The decoder counts once they stop changing. Triton records a request's statistics after its response has
    left, so the last decoder calls can be missing right after the streams end; how many calls a stream makes is not
    known ahead (a chunk's vocoder call can be skipped), so poll until the counts hold still for ``quiet_s``."""
    counts, still_since = decoder_counts(url), time.monotonic()
    deadline = still_since + timeout_s
    while time.monotonic() < deadline and time.monotonic() - still_since < quiet_s:
        time.sleep(0.05)
        latest = decoder_counts(url)
        if latest != counts:
            counts, still_since = latest, time.monotonic()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=150)
    args = parser.parse_args(argv)
    if not args.model_repository.is_dir():
        print(f"error: {args.model_repository} is not a rendered repository (run make demo)", file=sys.stderr)
        return 2

    with TritonServer(args.model_repository, log_path=Path("build/bench/tts_stream_server.log")) as server:
        url = server.grpc_url

        def one(seed: int) -> dict:
            wave, rate, timing = synthesize(stream_args(url, seed, args.max_new_tokens))
            return timing | {"audio_s": wave.size / rate}

        warm = one(10_000)
        print(f"one stream: first chunk {warm['first_chunk_s'] * 1000:.0f} ms, {warm['audio_s']:.2f} s audio "
              f"in {warm['latency_s']:.2f} s")
        before = decoder_counts(url)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.streams) as pool:
            results = list(pool.map(one, range(args.streams)))
        wall = time.perf_counter() - start
        after = settled_decoder_counts(url)
    audio = sum(r["audio_s"] for r in results)
    firsts = [r["first_chunk_s"] * 1000 for r in results]
    print(f"{args.streams} streams at once: wall {wall:.1f} s for {audio:.1f} s of audio, aggregate RTF {wall / audio:.2f}, "
          f"first chunk median {np.median(firsts):.0f} ms (max {max(firsts):.0f} ms)")
    for model in DECODER_MODELS:
        calls, executions = (after[model][i] - before[model][i] for i in (0, 1))
        print(f"{model}: {calls} calls in {executions} executions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
