"""First-audio latency through the gateway vs calling Triton directly, at 1, 4 and 8 concurrent requests.

    python bench/bench_gateway.py [--model-repository build/model_repository] [--rounds 4] [--max-new-tokens 60]

Starts tritonserver on the rendered repository (``make demo`` renders ``build/model_repository``) and the gateway
in front of it, warms both paths up, then for each concurrency sends rounds of that many requests at once, the
direct gRPC ``tts_stream`` stream and the gateway's ``/v1/audio/speech`` (pcm, chunked) in turn with the same
seeds. First audio = request start until the first audio bytes arrive. Prints p50/p95 per path and the gateway's
added latency (not a test: timings live here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.process import GatewayProcess  # noqa: E402
from gateway.triton import Triton, string  # noqa: E402
from stepaudio_server.launcher import TritonServer  # noqa: E402

TEXT = "你好，世界。今天天气很好。"


async def direct(triton: Triton, seed: int, tokens: int) -> float:
    tensors = {"TEXT": string(TEXT), "SPEAKER": string("Tingting"), "SEED": np.array([seed], np.int64),
               "MAX_NEW_TOKENS": np.array([tokens], np.int32)}
    start, first = time.perf_counter(), None
    async for item in triton.stream("tts_stream", tensors, ["WAVEFORM"]):
        if first is None and item["WAVEFORM"].size:
            first = time.perf_counter() - start
    return first


async def through_gateway(http, seed: int, tokens: int) -> float:
    body = {"model": "step-audio-tts", "input": TEXT, "voice": "Tingting", "response_format": "pcm", "seed": seed,
            "max_new_tokens": tokens}
    start, first = time.perf_counter(), None
    async with http.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for data in response.aiter_raw():
            if first is None and data:
                first = time.perf_counter() - start
    return first


async def run(grpc_url: str, gateway_url: str, rounds: int, tokens: int) -> None:
    import httpx2 as httpx

    triton = Triton(grpc_url)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=600) as http:
        await direct(triton, 1, tokens)
        await through_gateway(http, 1, tokens)
        print(f"{'concurrency':>11} | {'direct p50':>10} | {'direct p95':>10} | {'gateway p50':>11} | {'gateway p95':>11} | added p50")
        for concurrency in (1, 4, 8):
            times: dict[str, list[float]] = {"direct": [], "gateway": []}
            for r in range(rounds):
                seeds = [100 * concurrency + 10 * r + i for i in range(concurrency)]
                times["direct"] += await asyncio.gather(*(direct(triton, s, tokens) for s in seeds))
                times["gateway"] += await asyncio.gather(*(through_gateway(http, s, tokens) for s in seeds))
            p = {name: np.percentile(np.array(v) * 1000, [50, 95]) for name, v in times.items()}
            print(f"{concurrency:>11} | {p['direct'][0]:>7.0f} ms | {p['direct'][1]:>7.0f} ms | {p['gateway'][0]:>8.0f} ms | "
                  f"{p['gateway'][1]:>8.0f} ms | {p['gateway'][0] - p['direct'][0]:+.0f} ms", flush=True)
    await triton.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    args = parser.parse_args(argv)
    if not args.model_repository.is_dir():
        print(f"error: {args.model_repository} is not a rendered repository (run make demo)", file=sys.stderr)
        return 2
    logs = Path("build/bench")
    logs.mkdir(parents=True, exist_ok=True)
    with TritonServer(args.model_repository, log_path=logs / "gateway_triton.log") as server, \
            GatewayProcess(server.grpc_url, logs / "gateway_voices.sqlite3", logs / "gateway.log",
                           "--log-level", "warning", "--rate-per-minute", "100000", "--max-concurrent", "64") as gateway:
        asyncio.run(run(server.grpc_url, gateway.url, args.rounds, args.max_new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
