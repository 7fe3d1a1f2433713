"""Benchmark report: perf_analyzer (the served Triton's release) on ensemble_tts and tts_stream, our streaming client, token2wav RTF by
backend, per-model server time from Triton's statistics → ``bench/report/README.md`` + PNG plots.

    make bench                                      # = python bench/report.py (renders build/model_repository first)
    python bench/report.py [--model-repository DIR] [--concurrency 1 2 4] [--max-new-tokens 120]
                           [--decoder-dir DIR] [--token2wav-seconds 5] [--out bench/report]

Starts one server on the repository, then per concurrency: perf_analyzer (``bench/perf_analyzer.sh``, request-count
mode, 3 requests per client) on both models and N concurrent streams of ``clients.tts`` (first-chunk latency, audio
seconds per second). Token2wav RTF runs in-process after the server stopped, with a plain fp32 matmul (torch,
same threads) measured in the same run as the machine's reference: every number of one report comes from one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sgemm import sgemm_gflops  # noqa: E402
from bench.token2wav_requests import requests_for, run  # noqa: E402
from clients.tts import synthesize  # noqa: E402
from stepaudio_contract.compat import DEFAULT_VERSION  # noqa: E402
from stepaudio_server.launcher import TritonServer  # noqa: E402

IDS_PER_SECOND = 41.667  # decoder ids per second of speech
PERF_ANALYZER = f"perf_analyzer {DEFAULT_VERSION}"  # bench/perf_analyzer.sh installs the served release's
TTS_STREAM_NOTE = (
    f"audio s/s = infer/s × seconds per request. {PERF_ANALYZER} says it times a decoupled model's first response, "
    "yet its tts_stream latency follows the whole stream's time; the first-chunk latency is the client table's."
)
SERVER_MODELS = ("tts", "tts_llm", "tts_frontend", "flow_decoder", "vocoder", "tts_stream")


def perf_analyzer(server: TritonServer, model: str, concurrency: int, max_new_tokens: int, out: Path) -> dict:
    csv_path = out / f"pa_{model}_c{concurrency}.csv"
    env = dict(os.environ, STEPAUDIO_HTTP_URL=server.http_url, STEPAUDIO_GRPC_URL=server.grpc_url,
               STEPAUDIO_ADMIN_KEY=server.admin_key or "", STEPAUDIO_GRPC_ADMIN_KEY=server.grpc_admin_key or "", PERF_MAX_NEW_TOKENS=str(max_new_tokens))
    command = [str(ROOT / "bench" / "perf_analyzer.sh"), model, "--concurrency-range", str(concurrency),
               "--request-count", str(3 * concurrency), "-f", str(csv_path)]
    for _attempt in range(2):  # perf_analyzer has been seen to exit without output now and then: retry once
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode == 0 and csv_path.exists():
            break
    else:
        raise RuntimeError(f"perf_analyzer {model} c={concurrency} failed (exit {done.returncode}):\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    with csv_path.open() as f:
        row = next(csv.DictReader(f))
    csv_path.unlink()
    return {"throughput": float(row["Inferences/Second"]), "p50_ms": int(row["p50 latency"]) / 1e3,
            "p95_ms": int(row["p95 latency"]) / 1e3}


def client_streams(server: TritonServer, concurrency: int, max_new_tokens: int) -> dict:
    def one(seed: int) -> dict:
        args = types.SimpleNamespace(text="你好，欢迎使用阶跃星辰的语音合成服务。", speaker="Tingting", prompt_wav=None,
                                     seed=seed, temperature=None, top_k=None, top_p=None,
                                     max_new_tokens=max_new_tokens, stream=True, protocol="grpc", url=server.grpc_url)
        wave, rate, timing = synthesize(args)
        return timing | {"audio_s": wave.size / rate}

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(concurrency)))
    wall = time.perf_counter() - start
    firsts = [1e3 * r["first_chunk_s"] for r in results]
    return {"first_p50_ms": float(np.percentile(firsts, 50)), "first_p95_ms": float(np.percentile(firsts, 95)),
            "audio_per_s": sum(r["audio_s"] for r in results) / wall}


def server_statistics(server: TritonServer) -> dict[str, dict]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = {}
        for model in SERVER_MODELS:
            s = client.get_inference_statistics(model).model_stats[0]
            infer = s.inference_stats
            stats[model] = {
                "inferences": s.inference_count, "executions": s.execution_count,
                "queue_ms": infer.queue.ns / max(infer.queue.count, 1) / 1e6,
                "compute_ms": (infer.compute_input.ns + infer.compute_infer.ns + infer.compute_output.ns)
                / max(infer.compute_infer.count, 1) / 1e6,
            }
        return stats
    finally:
        client.close()


def token2wav_rtf(decoder_dir: Path, seconds: float, threads: int) -> dict[str, float]:
    import torch

    from stepaudio.decoder import DecoderNoise, OnnxToken2Wav, Token2Wav

    torch.set_num_threads(threads)
    decoders = {"pytorch": Token2Wav.from_checkpoint(decoder_dir),
                "onnxruntime": OnnxToken2Wav.from_checkpoint(decoder_dir, threads=threads),
                "pytorch, bf16 flow (opt-in)": Token2Wav.from_checkpoint(decoder_dir, dtype=torch.bfloat16)}
    config = decoders["pytorch"].config
    requests = requests_for(1, seconds)
    for r in requests:
        r.validate(config)
    noises = [DecoderNoise.from_seed(0, r.prompt_mel.shape[0], r.tokens.size, config) for r in requests]
    audio = 256 * config.flow.mel_frames_for_tokens(requests[0].tokens.size) / 22050
    rtf = {}
    for name, decoder in decoders.items():
        run(decoder, requests, noises)  # warm-up
        flow_s, vocoder_s, _ = run(decoder, requests, noises)
        rtf[name] = (flow_s + vocoder_s) / audio
    return rtf


def plot(out: Path, concurrencies, pa, streams, rtf, stats) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, style in (("ensemble_tts", "o-"), ("tts_stream", "s-")):
        ax.plot(concurrencies, [pa[model][c]["p50_ms"] for c in concurrencies], style, label=f"{model} p50 (perf_analyzer)")
        ax.plot(concurrencies, [pa[model][c]["p95_ms"] for c in concurrencies], style, alpha=0.5, label=f"{model} p95")
    ax.plot(concurrencies, [streams[c]["first_p50_ms"] for c in concurrencies], "^--", label="clients.tts first chunk p50")
    ax.set(xlabel="concurrency", ylabel="ms", title="Latency (perf_analyzer: per request; clients.tts: first chunk)")
    ax.legend(fontsize=7)
    names.append(_save(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in ("ensemble_tts", "tts_stream"):
        ax.plot(concurrencies, [pa[model][c]["audio_per_s"] for c in concurrencies], "o-", label=f"{model} (perf_analyzer)")
    ax.plot(concurrencies, [streams[c]["audio_per_s"] for c in concurrencies], "^--", label="clients.tts streams")
    ax.set(xlabel="concurrency", ylabel="audio seconds per second", title="Throughput")
    ax.legend(fontsize=7)
    names.append(_save(fig, out / "throughput.png"))

    if rtf:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(list(rtf), list(rtf.values()))
        ax.set(ylabel="RTF (lower is faster)", title="token2wav by backend")
        names.append(_save(fig, out / "token2wav_rtf.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    models = [m for m in SERVER_MODELS if stats[m]["executions"]]
    ax.barh(models, [stats[m]["compute_ms"] for m in models], label="compute per execution")
    ax.barh(models, [stats[m]["queue_ms"] for m in models], left=[stats[m]["compute_ms"] for m in models],
            label="queue per request")
    ax.set(xlabel="ms", title="Server time per model (Triton statistics)")
    ax.legend(fontsize=7)
    names.append(_save(fig, out / "server_time.png"))
    return names


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def markdown(args, machine, concurrencies, pa, streams, rtf, peak, stats, images) -> str:
    audio_per_request = args.max_new_tokens / IDS_PER_SECOND
    lines = [
        "# Benchmark report",
        "",
        f"Machine: {machine}. Repository `{args.model_repository}`; every request {args.max_new_tokens} ids "
        f"(≈{audio_per_request:.1f} s of speech). Regenerate: `make bench` (or `python bench/report.py "
        f"--model-repository {args.model_repository}`). All numbers come from one run; the machine is shared, so "
        "compare ratios within this report, not across reports.",
        "",
        f"## {PERF_ANALYZER} (request-count mode, 3 requests per client)",
        "| model | concurrency | infer/s | audio s/s | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for model in ("ensemble_tts", "tts_stream"):
        for c in concurrencies:
            r = pa[model][c]
            lines.append(f"| {model} | {c} | {r['throughput']:.2f} | {r['audio_per_s']:.2f} | {r['p50_ms']:.0f} | "
                         f"{r['p95_ms']:.0f} |")
    lines += ["", TTS_STREAM_NOTE, "", "## Our streaming client (`clients.tts --stream`, gRPC)",
              "| concurrency | first chunk p50 ms | p95 ms | audio s/s |", "|---|---|---|---|"]
    for c in concurrencies:
        r = streams[c]
        lines.append(f"| {c} | {r['first_p50_ms']:.0f} | {r['first_p95_ms']:.0f} | {r['audio_per_s']:.2f} |")
    if rtf:
        lines += ["", f"## token2wav RTF by backend ({args.decoder_dir}, {args.token2wav_seconds:g} s of speech + 3 s "
                  f"prompt, {args.threads} threads)", "", f"Plain fp32 matmul in the same run: {peak:.0f} GFLOP/s.", "",
                  "| backend | RTF |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in rtf.items()]
    lines += ["", "## Server time per model (Triton statistics over the whole run)",
              "| model | inferences | executions | compute ms / execution | queue ms / request |", "|---|---|---|---|---|"]
    for model, s in stats.items():
        lines.append(f"| {model} | {s['inferences']} | {s['executions']} | {s['compute_ms']:.1f} | {s['queue_ms']:.1f} |")
    lines += [""] + [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--decoder-dir", type=Path, help="a decoder folder with its ONNX exports (skip RTF if none)")
    parser.add_argument("--token2wav-seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--machine", default=f"{platform.machine()}, {os.cpu_count()} cores")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    parser.add_argument("--replot", action="store_true", help="redraw from the out folder's results.json only")
    args = parser.parse_args(argv)
    results = args.out / "results.json"
    if args.replot:
        saved = json.loads(results.read_text())
        for key in ("model_repository", "decoder_dir"):
            setattr(args, key, saved["args"][key] and Path(saved["args"][key]))
        for key in ("max_new_tokens", "token2wav_seconds", "threads", "machine", "concurrency"):
            setattr(args, key, saved["args"][key])
        pa = {m: {int(c): r for c, r in v.items()} for m, v in saved["perf_analyzer"].items()}
        streams = {int(c): r for c, r in saved["streams"].items()}
        return _write(args, pa, streams, saved["rtf"], saved["peak"], saved["stats"])
    if not args.model_repository.is_dir():
        print(f"error: {args.model_repository} is not a rendered repository (make repository / make demo)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    audio_per_request = args.max_new_tokens / IDS_PER_SECOND
    pa: dict[str, dict[int, dict]] = {"ensemble_tts": {}, "tts_stream": {}}
    streams = {}
    server = TritonServer(args.model_repository, log_path=ROOT / "build" / "report_server.log")
    with server.start(timeout=900):  # every model of the repository loads; a busy 2-core box takes minutes
        client_streams(server, 1, args.max_new_tokens)  # warm-up
        for c in args.concurrency:
            for model in pa:
                pa[model][c] = perf_analyzer(server, model, c, args.max_new_tokens, args.out)
                pa[model][c]["audio_per_s"] = pa[model][c]["throughput"] * audio_per_request
                print(model, c, pa[model][c], flush=True)
            streams[c] = client_streams(server, c, args.max_new_tokens)
            print("clients.tts", c, streams[c], flush=True)
        stats = server_statistics(server)
    rtf, peak = {}, 0.0
    if args.decoder_dir:
        peak = sgemm_gflops(args.threads)
        rtf = token2wav_rtf(args.decoder_dir, args.token2wav_seconds, args.threads)
        print("sgemm GFLOP/s", peak, "RTF", rtf, flush=True)
    saved_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "replot")}
    results.write_text(json.dumps({"args": saved_args, "perf_analyzer": pa, "streams": streams, "rtf": rtf,
                                   "peak": peak, "stats": stats}, indent=1))
    return _write(args, pa, streams, rtf, peak, stats)


def _write(args, pa, streams, rtf, peak, stats) -> int:
    images = plot(args.out, args.concurrency, pa, streams, rtf, stats)
    text = markdown(args, args.machine, args.concurrency, pa, streams, rtf, peak, stats, images)
    (args.out / "README.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
