"""Concurrent streaming TTS: N ``tts_stream`` requests at once against a live server, for each N given.

    python bench/bench_tts_stream.py [--model-repository build/model_repository] [--streams 1,4,8]
                                     [--rounds 3] [--max-new-tokens 150] [--out build/bench/tts_stream.json]

Starts the server on the rendered repository (``make demo`` renders ``build/model_repository``), sends one warm-up
stream, then for each N, ``--rounds`` rounds of N streams at once over gRPC (each its own seed). Prints per N the
wall time, the aggregate real-time factor (wall time / seconds of audio of all streams), first-chunk p50/p95,
underruns (a chunk that arrived after the audio before it had finished playing, ``bench/playback.py``) and how many
executions ``flow_decoder`` and ``vocoder`` needed for their calls (fewer executions than calls = batched). The JSON
keeps every stream's chunk arrivals (s since its request, samples) to locate a gap. A/B a tts_stream setting by
rendering two repositories (``--set stream_deadline_cut=true``, README: continuity).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.playback import continuity, percentiles_ms  # noqa: E402
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
    parser.add_argument("--streams", default="1,4,8", help="comma-separated concurrencies")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of N concurrent streams per N")
    parser.add_argument("--max-new-tokens", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("build/bench/tts_stream.json"))
    args = parser.parse_args(argv)
    if not args.model_repository.is_dir():
        print(f"error: {args.model_repository} is not a rendered repository (run make demo)", file=sys.stderr)
        return 2
    concurrencies = [int(n) for n in args.streams.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "by_streams": {}}

    with TritonServer(args.model_repository, log_path=args.out.with_suffix(".server.log")) as server:
        url = server.grpc_url

        def one(seed: int) -> dict:
            wave, rate, timing = synthesize(stream_args(url, seed, args.max_new_tokens))
            return {"continuity": continuity(timing["arrivals"], rate), "audio_s": wave.size / rate,
                    "arrivals": [(round(t, 4), n) for t, n in timing["arrivals"]]}

        warm = one(10_000)["continuity"]
        print(f"warm-up stream: first chunk {warm.first_audio_s * 1000:.0f} ms, {warm.audio_s:.2f} s audio")
        seed = 0
        for streams in concurrencies:
            before = decoder_counts(url)
            results, wall = [], 0.0
            for _ in range(args.rounds):
                start = time.perf_counter()
                with ThreadPoolExecutor(streams) as pool:
                    results += list(pool.map(one, range(seed, seed + streams)))
                wall += time.perf_counter() - start
                seed += streams
            after = settled_decoder_counts(url)
            heard = [r["continuity"] for r in results]
            audio = sum(c.audio_s for c in heard)
            row = {"streams": streams, "requests": len(heard), "wall_s": round(wall, 2), "rtf": round(wall / audio, 3),
                   "first_chunk_ms": percentiles_ms([c.first_audio_s for c in heard]),
                   "streams_with_underruns": sum(1 for c in heard if c.underruns),
                   "underruns": sum(c.underruns for c in heard),
                   "worst_gap_ms": round(max(c.worst_gap_s for c in heard) * 1000, 1),
                   "decoder_calls_per_execution": {
                       m: round((after[m][0] - before[m][0]) / max(1, after[m][1] - before[m][1]), 2)
                       for m in DECODER_MODELS},
                   # (s since the request, samples) of every chunk of every stream: where a gap came from
                   "arrivals": [r["arrivals"] for r in results]}
            report["by_streams"][streams] = row
            first = row["first_chunk_ms"]
            print(f"{streams} at once ×{args.rounds}: RTF {row['rtf']:.2f}, first chunk p50 {first['p50']:.0f} ms "
                  f"p95 {first['p95']:.0f} ms, underruns {row['underruns']} in {row['streams_with_underruns']} of "
                  f"{len(heard)} streams (worst gap {row['worst_gap_ms']:.0f} ms), decoder calls per execution "
                  + ", ".join(f"{m} {v}" for m, v in row["decoder_calls_per_execution"].items()), flush=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
