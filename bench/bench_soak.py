"""Soak: many streams, cancellations and hostile requests against a server this script starts and supervises.

    .venv/bin/python bench/bench_soak.py --repository build/model_repository --sequential 1000 --concurrent 64

Phases: warm-up, then ``--rounds`` rounds of ``--sequential`` streams one after another and ``--concurrent`` streams
at once (a gRPC client each). Every ``--cancel-every``-th stream is cancelled after its first chunk; every ``--bad-every``-th
request is hostile (100 kB text, MAX_NEW_TOKENS 2^31-1, the nested-JSON body to the HTTP endpoint) and must be
refused with INVALID_ARG / 400. Prints unexpected failures, first-chunk p50/p95, and the server's memory (RSS of
tritonserver + stubs) and shared memory before, right after, and after a short idle, per round; the change from
the first round to the last separates a leak from the first round's high water.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stepaudio_server.launcher import TritonServer  # noqa: E402
from stepaudio_server.supervisor import list_stubs  # noqa: E402

REFUSALS = {"long_text": "characters; the limit is", "huge_cap": "MAX_NEW_TOKENS must be at most"}
NESTED = b'{"TEXT":' + b"[" * 50_000 + b"]" * 50_000 + b',"SPEAKER":"Tingting"}'


def _rss_kib(pid: int) -> int:
    try:
        return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def rss_by_process(server: TritonServer) -> dict[str, float]:
    """MiB per model (its stubs together) and for tritonserver itself."""
    by = {"tritonserver": _rss_kib(server.process.pid) / 1024}
    for stub in list_stubs(server.process.pid):
        by[stub.model] = by.get(stub.model, 0.0) + _rss_kib(stub.pid) / 1024
    return by


def memory(server: TritonServer) -> tuple[float, float]:
    """(RSS MiB of tritonserver + its stubs, MiB of this server's /dev/shm regions)."""
    rss = sum(rss_by_process(server).values()) * 1024
    server.supervisor.scan()
    shm = sum(os.path.getsize(f"/dev/shm/{r}") for r in server.supervisor.shm_regions if os.path.exists(f"/dev/shm/{r}"))
    return rss / 1024, shm / 2**20


def _input(name, array):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def one_stream(url: str, seed: int, kind: str, tokens: int) -> tuple[str, float | None]:
    """→ (outcome, first-chunk seconds). Outcomes: ok, cancelled, refused (expected), or 'unexpected: ...'."""
    import tritonclient.grpc as grpcclient

    if kind == "nested":
        request = urllib.request.Request(f"http://{url.split('|')[1]}/v2/models/tts_stream/generate_stream", data=NESTED,
                                         method="POST")
        try:
            urllib.request.urlopen(request, timeout=60)
            return "unexpected: nested JSON accepted", None
        except urllib.error.HTTPError as exc:
            return ("refused", None) if exc.code == 400 else (f"unexpected: HTTP {exc.code}", None)
    text = "你" * 34_000 if kind == "long_text" else "你好，世界。"
    max_new = 2**31 - 1 if kind == "huge_cap" else tokens
    client = grpcclient.InferenceServerClient(url.split("|")[0])
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    started, first, finished = time.perf_counter(), None, False
    try:
        client.async_stream_infer("tts_stream", [
            _input("TEXT", np.array([text.encode()], dtype=np.object_)),
            _input("SPEAKER", np.array([b"Tingting"], dtype=np.object_)),
            _input("SEED", np.array([seed], np.int64)),
            _input("MAX_NEW_TOKENS", np.array([max_new], np.int32)),
        ], enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=300)
            if error is not None:
                # gRPC stream errors carry a message, no code: the refusal is recognised by its message.
                if kind in ("long_text", "huge_cap") and REFUSALS[kind] in str(error):
                    return "refused", None
                return f"unexpected: {error}", first
            if kind in ("long_text", "huge_cap"):
                return "unexpected: hostile request accepted", None
            if result.as_numpy("WAVEFORM") is not None and first is None:
                first = time.perf_counter() - started
                if kind == "cancel":
                    return "cancelled", first
            if result.get_response().parameters["triton_final_response"].bool_param:
                finished = True
                return "ok", first
    finally:
        client.stop_stream(cancel_requests=not finished)  # a finished call is closed (compat.py: in_band_grpc_cancel)
        client.close()


def oversized_inputs(server: TritonServer) -> None:
    """The QA's large inputs: a 10-minute voice prompt and a 230 MB clip to the tokenizer (over gRPC, which the
    HTTP guard's body limit does not cover). Prints the time to the refusal and the memory they leave."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    cases = {
        "10-minute prompt → ensemble_tts": ("ensemble_tts", {
            "TEXT": np.array([["你好".encode()]], dtype=np.object_), "PROMPT_TEXT": np.array([["你好".encode()]], dtype=np.object_),
            "PROMPT_AUDIO": np.zeros((1, 16_000 * 600), np.float32), "PROMPT_SAMPLE_RATE": np.array([[16_000]], np.int32)}),
        "230 MB clip → tokenizer": ("tokenizer", {
            "AUDIO": np.zeros((1, 1, 230 * 2**20 // 4), np.float32), "SAMPLE_RATE": np.array([[48_000]], np.int32)}),
    }
    for name, (model, tensors) in cases.items():
        rss_before, _ = memory(server)
        started = time.perf_counter()
        try:
            client.infer(model, [_input(k, v) for k, v in tensors.items()])
            outcome = "accepted (unexpected)"
        except Exception as exc:  # noqa: BLE001 - the refusal is the expected outcome
            outcome = str(exc).split("] ", 1)[-1][:80]
        seconds = time.perf_counter() - started
        print(f"{name}: {seconds:.2f} s, RSS {memory(server)[0] - rss_before:+.0f} MiB, {outcome}")
    client.close()


def kind_of(i: int, args) -> str:
    if args.bad_every and i % args.bad_every == args.bad_every - 1:
        return ("long_text", "huge_cap", "nested")[(i // args.bad_every) % 3]
    if args.cancel_every and i % args.cancel_every == args.cancel_every - 1:
        return "cancel"
    return "stream"


def report(name: str, outcomes: list[tuple[str, float | None]], seconds: float) -> int:
    unexpected = [o for o, _ in outcomes if o.startswith("unexpected")]
    firsts = np.array([f for o, f in outcomes if f is not None and o == "ok"])
    counts = {k: sum(o == k for o, _ in outcomes) for k in ("ok", "cancelled", "refused")}
    p50, p95 = (np.percentile(firsts, 50) * 1000, np.percentile(firsts, 95) * 1000) if firsts.size else (0, 0)
    print(f"{name}: {len(outcomes)} requests in {seconds:.0f} s: {counts}, unexpected {len(unexpected)}; "
          f"first chunk p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    for line in unexpected[:5]:
        print("   ", line[:300])
    return len(unexpected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=40, help="MAX_NEW_TOKENS of the normal streams")
    parser.add_argument("--cancel-every", type=int, default=7)
    parser.add_argument("--bad-every", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of sequential + concurrent streams; growth "
                        "after the first round (high water) is what a leak would show")
    args = parser.parse_args()

    with TritonServer(args.repository, log_path=Path("build/soak_server.log")) as server:
        url = f"{server.grpc_url}|{server.http_url}"
        for i in range(3):
            one_stream(url, i, "stream", args.tokens)
        oversized_inputs(server)
        before, by_before = memory(server), rss_by_process(server)
        print(f"baseline after warm-up: RSS {before[0]:.0f} MiB, shared memory {before[1]:.0f} MiB")
        unexpected = 0
        idle_by_round = []
        for round_number in range(1, args.rounds + 1):
            seeds = 100_000 * round_number
            started = time.perf_counter()
            outcomes = []
            for i in range(args.sequential):
                outcomes.append(one_stream(url, seeds + i, kind_of(i, args), args.tokens))
                if (i + 1) % 100 == 0:
                    report(f"  after {i + 1}", outcomes, time.perf_counter() - started)
            unexpected += report(f"round {round_number}: sequential ×{args.sequential}", outcomes, time.perf_counter() - started)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                outcomes = list(pool.map(lambda i, seeds=seeds: one_stream(url, seeds + 50_000 + i, kind_of(i, args), args.tokens),
                                         range(args.concurrent)))
            unexpected += report(f"round {round_number}: concurrent ×{args.concurrent}", outcomes, time.perf_counter() - started)
            after = memory(server)
            time.sleep(args.idle_seconds)
            idle = memory(server)
            idle_by_round.append(rss_by_process(server))
            print(f"round {round_number} RSS MiB: baseline {before[0]:.0f}, after {after[0]:.0f}, after "
                  f"{args.idle_seconds:.0f} s idle {idle[0]:.0f} ({idle[0] - before[0]:+.0f}); shared memory MiB: "
                  f"{before[1]:.0f} → {after[1]:.0f} → {idle[1]:.0f}")
        # The first round fills caches and pools to their working size (high water); a leak keeps growing after it.
        for name, earlier, later in (("warm-up → round 1", by_before, idle_by_round[0]),
                                     ("round 1 → last round", idle_by_round[0], idle_by_round[-1])):
            grown = {m: later.get(m, 0) - v for m, v in earlier.items() if abs(later.get(m, 0) - v) >= 5}
            total = sum(later.values()) - sum(earlier.values())
            print(f"RSS change {name}: {total:+.0f} MiB; by process (≥5 MiB): "
                  + (", ".join(f"{m} {d:+.0f}" for m, d in sorted(grown.items())) or "none"))
        print(f"stub restarts: {server.supervisor.restarts or 'none'}; ready: {not server.down_models()}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
