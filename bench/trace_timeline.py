"""The first chunk's timeline of ``tts_stream``: where its latency goes, from Triton's trace API and statistics.

    python bench/trace_timeline.py [--model-repository build/model_repository] [--streams 1,8] [--requests 8]
                                   [--out build/bench/trace_timeline.json]
    python bench/trace_timeline.py --http-url HOST:PORT --grpc-url HOST:PORT --admin-key KEY   # a running server

Starts the server (or attaches to one started by ``python -m stepaudio_server``, whose trace file must be readable
here), turns on Triton's tracing (``POST /v2/trace/setting``: TIMESTAMPS, every request, one file per trace), sends one
untraced warm-up stream, then per concurrency N, ``--requests`` streams N at a time. For each stream it reads its
trace (the gRPC read, queue, ``execute``, first response, first send) and the called models' statistics, and prints
per step of the first chunk's path the queue and compute time, and the overhead: first-chunk latency − model compute
on that path.

What Triton 2.51 can and cannot show (docs/performance.md#first-chunk-timeline): BLS calls join their caller's trace
only while the caller's ``execute`` runs (``stepaudio_triton/adapter.py``), so the offline ``ensemble_tts`` traces as
one tree, but ``tts_stream`` (decoupled: it serves each stream on a thread after ``execute`` returned) traces alone.
Its called models' steps therefore come from their statistics: at concurrency 1 read at the moment the first chunk
arrives (exactly the first chunk's calls, checked), under concurrency the round's per-call averages. The LLM's prefill
and decode steps are not separable in 2.51's trace (a python model cannot report its own activities); they are the
part of the stream thread's window that no called model's queue or compute explains.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The models a stream's first chunk calls, once each: the frontend, the LLM stream, one flow window, one vocoder call.
FIRST_CHUNK_CALLS = ("tts_frontend", "tts_llm", "flow_decoder", "vocoder")
# A decoupled model's compute in its statistics is its ``execute``, which only hands the request to a thread: shown,
# never counted as model compute.
HAND_OFF_ONLY = ("tts_llm",)
TRACE_ON = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "1"}
TRACE_OFF = {"trace_level": ["OFF"]}


# --- the trace file: pure functions --------------------------------------------------------------------------------

@dataclass
class Span:
    """One traced request: Triton writes a header entry (model, parent) and one entry per timestamp."""

    id: int
    model: str = "?"
    parent: int | None = None
    request_id: str = ""
    events: dict[str, list[int]] = field(default_factory=dict)  # activity → its timestamps (ns), in order

    def first(self, name: str) -> int | None:
        times = self.events.get(name)
        return min(times) if times else None


def parse_trace(entries: list[dict]) -> dict[int, Span]:
    """Triton's trace entries (the JSON arrays of its trace files, concatenated) → spans by trace id."""
    spans: dict[int, Span] = {}
    for entry in entries:
        span = spans.setdefault(entry["id"], Span(entry["id"]))
        if "model_name" in entry:
            span.model, span.parent = entry["model_name"], entry.get("parent_id")
            span.request_id = entry.get("request_id", "")
        for stamp in entry.get("timestamps", ()):
            span.events.setdefault(stamp["name"], []).append(stamp["ns"])
    for span in spans.values():
        for times in span.events.values():
            times.sort()
    return spans


def read_trace_files(paths) -> list[dict]:
    entries: list[dict] = []
    for path in paths:
        entries += json.loads(Path(path).read_text())
    return entries


def ancestors(spans: dict[int, Span], span_id: int) -> list[Span]:
    """The span's parents up to its root, nearest first."""
    chain, parent = [], spans[span_id].parent
    while parent is not None and parent in spans:
        chain.append(spans[parent])
        parent = spans[parent].parent
    return chain


def stream_timeline(span: Span) -> dict[str, float]:
    """A ``tts_stream`` root span → the first chunk's server-side steps in ms, in path order, and its latency
    (request read → first response written to the socket)."""
    start = span.first("GRPC_WAITREAD_END") or span.first("HTTP_RECV_END") or span.first("REQUEST_START")
    first_response = span.first("INFER_RESPONSE_COMPLETE")
    sent = [t for t in span.events.get("GRPC_SEND_END", ()) if first_response is None or t >= first_response]
    first_sent = sent[0] if sent else first_response

    def ms(a: int | None, b: int | None) -> float:
        return (b - a) / 1e6 if a is not None and b is not None else float("nan")

    return {
        "read → tts_stream queued": ms(start, span.first("QUEUE_START")),
        "tts_stream queue": ms(span.first("QUEUE_START"), span.first("COMPUTE_START")),
        "tts_stream execute (hand-off to its thread)": ms(span.first("COMPUTE_START"), span.first("COMPUTE_END")),
        "stream thread → first response": ms(span.first("COMPUTE_END"), first_response),
        "first response → written": ms(first_response, first_sent),
        "first_chunk_ms": ms(start, first_sent),
    }


def stream_roots(spans: dict[int, Span], model: str = "tts_stream", since_ns: int = 0,
                 until_ns: int | None = None) -> list[Span]:
    """Root spans of ``model`` whose request started in [since_ns, until_ns], by start."""
    roots = [s for s in spans.values() if s.model == model and s.parent is None and s.first("REQUEST_START")
             and s.first("REQUEST_START") >= since_ns and (until_ns is None or s.first("REQUEST_START") <= until_ns)]
    return sorted(roots, key=lambda s: s.first("REQUEST_START"))


# --- statistics: pure functions ------------------------------------------------------------------------------------

def per_call(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Two statistics snapshots (model → count, queue_ns, compute_ns) → per model: calls, and queue / compute ms per
    call."""
    out = {}
    for model in after:
        calls = after[model]["count"] - before[model]["count"]
        out[model] = {"calls": calls,
                      "queue_ms": (after[model]["queue_ns"] - before[model]["queue_ns"]) / 1e6 / max(calls, 1),
                      "compute_ms": (after[model]["compute_ns"] - before[model]["compute_ns"]) / 1e6 / max(calls, 1)}
    return out


def first_chunk_breakdown(timeline: dict[str, float], calls: dict[str, dict],
                          client_first_chunk_ms: float | None = None) -> dict:
    """One stream's first chunk: its trace's steps, then inside the stream thread's window each called model's queue
    and compute (``calls``: ``per_call`` for one call each), the rest of the window (the LLM's prefill and decode
    steps to the first chunk's ids, BLS hops, the stream's own Python), and the overhead = first-chunk latency − model
    compute on the path (the called models' compute; the LLM's is not separable from its per-step overhead in the
    trace, so it counts as overhead)."""
    steps = [(name, value, None) for name, value in timeline.items() if name != "first_chunk_ms"]
    window = timeline["stream thread → first response"]
    explained = compute = 0.0
    inside = []
    for model in FIRST_CHUNK_CALLS:
        if model not in calls:
            continue
        queue_ms, compute_ms = calls[model]["queue_ms"], calls[model]["compute_ms"]
        inside.append((f"  {model}" + (" (execute: hand-off)" if model in HAND_OFF_ONLY else ""), queue_ms, compute_ms))
        explained += queue_ms + compute_ms
        compute += 0.0 if model in HAND_OFF_ONLY else compute_ms
    inside.append(("  rest: LLM steps to the first chunk's ids, BLS hops, Python", window - explained, None))
    at = [i for i, (name, _, _) in enumerate(steps) if name == "stream thread → first response"][0]
    rows = steps[:at + 1] + inside + steps[at + 1:]
    latency = timeline["first_chunk_ms"]
    result = {"rows": rows, "first_chunk_ms": latency, "model_compute_ms": compute, "overhead_ms": latency - compute,
              "queue_ms": sum(calls[m]["queue_ms"] for m in FIRST_CHUNK_CALLS if m in calls)}
    if client_first_chunk_ms is not None:
        result["client_first_chunk_ms"] = client_first_chunk_ms
        result["client_overhead_ms"] = client_first_chunk_ms - compute
    return result


def median_breakdown(breakdowns: list[dict]) -> dict:
    """Per row and per figure, the median over streams (rows keep the first breakdown's order)."""
    rows = []
    for i, (name, _, _) in enumerate(breakdowns[0]["rows"]):
        values = [b["rows"][i] for b in breakdowns]
        queue = statistics.median(v[1] for v in values)
        computes = [v[2] for v in values if v[2] is not None]
        rows.append((name, queue, statistics.median(computes) if computes else None))
    figures = {key: statistics.median(b[key] for b in breakdowns) for key in breakdowns[0] if key != "rows"}
    return {"rows": rows, **figures, "streams": len(breakdowns)}


def format_breakdown(title: str, summary: dict) -> str:
    lines = [title, f"  {'step (median of ' + str(summary['streams']) + ' streams)':<64} {'wait/ms':>8} {'compute/ms':>10}"]
    for name, first, compute in summary["rows"]:
        lines.append(f"  {name:<64} {first:8.1f} {'' if compute is None else f'{compute:10.1f}'}")
    lines.append(f"  first chunk {summary['first_chunk_ms']:.1f} ms (server: read → first response written)"
                 + (f", {summary['client_first_chunk_ms']:.1f} ms at the client" if "client_first_chunk_ms" in summary
                    else ""))
    lines.append(f"  model compute on the path {summary['model_compute_ms']:.1f} ms, batch queues "
                 f"{summary['queue_ms']:.1f} ms; overhead (first chunk − compute) {summary['overhead_ms']:.1f} ms")
    return "\n".join(lines)


# --- the live run ---------------------------------------------------------------------------------------------------

def trace_setting(http_url: str, headers: dict, setting: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://{http_url}/v2/trace/setting", method="POST" if setting else "GET",
                                     data=json.dumps(setting).encode() if setting else None,
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def model_stats(client, models=FIRST_CHUNK_CALLS) -> dict[str, dict]:
    out = {}
    for model in models:
        stats = client.get_inference_statistics(model).model_stats[0].inference_stats
        out[model] = {"count": stats.success.count, "queue_ns": stats.queue.ns,
                      "compute_ns": stats.compute_input.ns + stats.compute_infer.ns + stats.compute_output.ns}
    return out


def one_stream(grpc_url: str, seed: int, max_new_tokens: int, stats_client=None) -> dict:
    """One ``tts_stream`` request; with ``stats_client`` the called models' statistics just before it and at its first
    chunk."""
    from bench.bench_tts_stream import stream_args
    from clients import triton_io
    from clients.tts import request_tensors

    tensors = request_tensors(stream_args(grpc_url, seed, max_new_tokens))
    before = model_stats(stats_client) if stats_client else None
    at_first = first_ns = None
    start_ns = time.monotonic_ns()  # Triton's trace clock is the same monotonic clock
    for event in triton_io.grpc_stream(triton_io.client(grpc_url, "grpc"), "tts_stream", tensors, ["WAVEFORM"]):
        if first_ns is None and event["WAVEFORM"].size:
            first_ns = time.monotonic_ns()
            at_first = model_stats(stats_client) if stats_client else None
    return {"start_ns": start_ns, "first_chunk_ms": (first_ns - start_ns) / 1e6, "before": before, "at_first": at_first}


def collect_traces(trace_file: str, roots_wanted: int, since_ns: int, until_ns: int, timeout_s: float = 30.0):
    """The run's ``tts_stream`` trees (Triton writes a tree once all its requests are released)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = parse_trace(read_trace_files(sorted(glob.glob(trace_file + ".*"))))
        roots = stream_roots(spans, since_ns=since_ns, until_ns=until_ns)
        if len(roots) >= roots_wanted or time.monotonic() > deadline:
            return spans, roots
        time.sleep(0.2)


def run(http_url: str, grpc_url: str, admin_headers: dict, concurrencies: list[int], requests: int,
        max_new_tokens: int, raw: Path | None = None) -> dict:
    import tritonclient.grpc as grpcclient

    stats_client = grpcclient.InferenceServerClient(grpc_url)
    one_stream(grpc_url, 10_000, max_new_tokens)  # warm-up, before tracing
    trace_file = trace_setting(http_url, admin_headers, TRACE_ON)["trace_file"]
    report = {}
    try:
        for streams in concurrencies:
            since = time.monotonic_ns()
            if streams == 1:
                results = [one_stream(grpc_url, seed, max_new_tokens, stats_client) for seed in range(requests)]
            else:
                before = model_stats(stats_client)
                with ThreadPoolExecutor(streams) as pool:
                    results = list(pool.map(lambda s: one_stream(grpc_url, s, max_new_tokens), range(requests)))
                time.sleep(1.0)  # the last calls' statistics are recorded after their responses left
                round_calls = per_call(before, model_stats(stats_client))
            _, roots = collect_traces(trace_file, len(results), since, time.monotonic_ns())
            if len(roots) != len(results):
                raise RuntimeError(f"{len(results)} streams sent, {len(roots)} tts_stream traces found in {trace_file}.*")
            breakdowns, inexact = [], 0
            for result, root in zip(sorted(results, key=lambda r: r["start_ns"]), roots):
                if streams == 1:
                    calls = per_call(result["before"], result["at_first"])
                    inexact += any(calls[m]["calls"] != 1 for m in FIRST_CHUNK_CALLS)
                else:
                    calls = round_calls
                breakdowns.append(first_chunk_breakdown(stream_timeline(root), calls, result["first_chunk_ms"]))
            if raw is not None:  # what the breakdown was computed from (tests/bench/data is such a recording)
                raw.mkdir(parents=True, exist_ok=True)
                (raw / f"streams{streams}.json").write_text(json.dumps({
                    "results": results, "round_calls": None if streams == 1 else round_calls,
                    "trace_ids": [root.id for root in roots]}))
            summary = median_breakdown(breakdowns)
            source = ("statistics read at each first chunk" + (f", {inexact} streams not exactly one call each"
                                                                 if inexact else "")) if streams == 1 else \
                "the round's per-call statistics"
            print(format_breakdown(f"{streams} stream(s) at a time, {len(results)} streams; called models from "
                                   f"{source}:", summary), flush=True)
            report[streams] = {"summary": summary, "called_models_from": source}
        if raw is not None:
            for path in sorted(glob.glob(trace_file + ".*")):
                (raw / Path(path).name).write_text(Path(path).read_text())
    finally:
        trace_setting(http_url, admin_headers, TRACE_OFF)
        stats_client.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--http-url", help="attach: the launcher's HTTP guard (admin API)")
    parser.add_argument("--grpc-url", help="attach: Triton's gRPC endpoint")
    parser.add_argument("--admin-key", default="", help="attach: the launcher's admin key")
    parser.add_argument("--streams", default="1,8", help="comma-separated concurrencies")
    parser.add_argument("--requests", type=int, default=8, help="streams per concurrency")
    parser.add_argument("--max-new-tokens", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("build/bench/trace_timeline.json"))
    parser.add_argument("--raw", type=Path, default=None, help="also keep the run's trace files and statistics here")
    args = parser.parse_args(argv)
    concurrencies = [int(n) for n in args.streams.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.http_url:
        from stepaudio_server.launcher import ADMIN_HEADER

        headers = {ADMIN_HEADER: args.admin_key} if args.admin_key else {}
        report = run(args.http_url, args.grpc_url, headers, concurrencies, args.requests, args.max_new_tokens,
                     args.raw)
    else:
        from stepaudio_server.launcher import TritonServer

        if not args.model_repository.is_dir():
            print(f"error: {args.model_repository} is not a rendered repository (run make demo)", file=sys.stderr)
            return 2
        with TritonServer(args.model_repository, log_path=args.out.with_suffix(".server.log")) as server:
            report = run(server.http_url, server.grpc_url, server.admin_headers, concurrencies, args.requests,
                         args.max_new_tokens, args.raw)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
