"""Per-op profile of the served token2wav graphs (``flow_decoder.onnx``, ``vocoder.onnx``) in ONNX Runtime on CPU.

    python bench/profile_token2wav_onnx.py [--decoder-dir build/bench/decoder] [--seconds 10] [--threads 2] [--top 15]

Runs each graph once to warm up, then once with ORT profiling on ``--seconds`` of speech (+ 3 s prompt), and prints
the time per op type (share of the graph's node time) and the slowest single nodes. A plain fp32 matmul (torch, same
threads) is measured in the same run, with the request's FLOPs (counted with attention, bench/flops.py; real size: flow
3.09 + HiFT 0.52 TFLOP for 10 s of speech) giving the fraction of that peak the graphs sustain. The decoder folder is the one
``bench/bench_token2wav.py`` writes and exports.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_token2wav import requests_for  # noqa: E402
from bench.flops import request_gflop  # noqa: E402
from bench.report import sgemm_gflops  # noqa: E402
from stepaudio.checkpoints import layout  # noqa: E402
from stepaudio.decoder.checkpoint import load_config  # noqa: E402
from stepaudio.decoder.token2wav import (  # noqa: E402
    FLOW_OUTPUTS,
    VOCODER_OUTPUTS,
    DecoderNoise,
    Token2Wav,
    Token2WavBase,
)


def node_times(profile: Path) -> list[tuple[str, str, float]]:
    """(op type, node name, ms) of every node run in an ORT profile."""
    events = json.loads(profile.read_text())
    return [(e["args"]["op_name"], e["name"].removesuffix("_kernel_time"), e["dur"] / 1e3)
            for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def profile_graph(path: Path, feeds: dict, outputs, threads: int, workdir: Path) -> tuple[float, list]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(list(outputs), feeds)  # warm-up (pre-packing, arena growth)
    start = time.perf_counter()
    session.run(list(outputs), feeds)
    wall = time.perf_counter() - start
    return wall, node_times(Path(session.end_profiling()))


def report(title: str, wall: float, nodes, warm_count: int, top: int) -> None:
    # The profile holds both runs; keep the second (the node sequence repeats).
    nodes = nodes[len(nodes) - warm_count:] if warm_count else nodes
    total = sum(ms for _, _, ms in nodes)
    by_type: dict[str, float] = defaultdict(float)
    for op, _, ms in nodes:
        by_type[op] += ms
    print(f"\n{title}: wall {wall:.2f} s, node time {total / 1e3:.2f} s ({len(nodes)} nodes)")
    for op, ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {op:<28}{ms / 1e3:>8.2f} s{100 * ms / total:>7.1f} %")
    print("  slowest nodes:")
    for op, name, ms in sorted(nodes, key=lambda n: -n[2])[:5]:
        print(f"    {ms:>9.1f} ms  {op:<16}{name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder-dir", type=Path, default=Path("build/bench/decoder"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--gflop", type=float, help="GFLOP of the request (default: counted, bench/flops.py)")
    args = parser.parse_args(argv)
    config = load_config(args.decoder_dir)
    builder = Token2WavBase()
    builder.config = config
    (request,) = requests_for(1, args.seconds)
    request.validate(config)
    noise = DecoderNoise.from_seed(0, request.prompt_mel.shape[0], request.tokens.size, config)
    flow_feeds = builder.flow_feeds([request], [noise.flow])

    import onnxruntime as ort

    peak = sgemm_gflops(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        flow_path = args.decoder_dir / layout.FLOW_DECODER_ONNX
        flow_wall, flow_nodes = profile_graph(flow_path, flow_feeds, FLOW_OUTPUTS, args.threads, workdir)
        # The vocoder's cost depends on the frame count only: a random mel of the target's length.
        frames = config.flow.mel_frames_for_tokens(request.tokens.size)
        mel = np.random.default_rng(0).standard_normal((80, frames)).astype(np.float32) - 5
        vocoder_feeds = builder.vocoder_feeds([mel], [noise.source_phase], [noise.source_noise])
        vocoder_wall, vocoder_nodes = profile_graph(args.decoder_dir / layout.VOCODER_ONNX, vocoder_feeds,
                                                    VOCODER_OUTPUTS, args.threads, workdir)
    print(f"token2wav ONNX graphs, {args.seconds:g} s of speech + 3 s prompt, {args.threads} threads, "
          f"onnxruntime {ort.__version__}")
    report("flow_decoder", flow_wall, flow_nodes, len(flow_nodes) // 2, args.top)
    report("vocoder", vocoder_wall, vocoder_nodes, len(vocoder_nodes) // 2, args.top)
    work = args.gflop or request_gflop(Token2Wav.from_checkpoint(args.decoder_dir), args.seconds)
    sustained = work / (flow_wall + vocoder_wall)
    print(f"\nsgemm peak (torch fp32, n 2048, {args.threads} threads, same run): {peak:.0f} GFLOP/s; token2wav "
          f"{work:.2f} GFLOP in {flow_wall + vocoder_wall:.2f} s = {sustained:.0f} GFLOP/s = {100 * sustained / peak:.0f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
