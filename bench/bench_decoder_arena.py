"""ONNX Runtime CPU arena settings for the served flow graph: resident memory after a large request, and speed.

    python bench/bench_decoder_arena.py [--large 2000] [--repeats 5]

Writes the tiny decoder tree and exports its flow graph to ``build/bench/arena`` (once). For each setting — the
default arena, ``enable_cpu_mem_arena = False`` (config ``enable_mem_arena "0"``) and the run option
``memory.enable_memory_arena_shrinkage = cpu:0`` — a fresh process warms up on 100-id requests, runs one
``--large``-id request and three 100-id ones, and prints its RSS after each phase. Then one process times the three
sessions interleaved (so machine load hits them alike): median of ``--repeats`` for 100 and 1,000 ids.
Every request has a 50-id / 103-frame voice prompt. Results: docs/decoder-contract.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stepaudio.checkpoints import layout  # noqa: E402
from stepaudio.decoder.checkpoint import load_config  # noqa: E402
from stepaudio.decoder.token2wav import DecoderNoise, Token2WavBase, Token2WavRequest  # noqa: E402
from stepaudio.testing.decoder import write_decoder  # noqa: E402

WORK = ROOT / "build" / "bench" / "arena"
SETTINGS = ("default", "no-arena", "shrinkage")


def prepare() -> tuple[Path, Path]:
    decoder_dir = WORK / layout.TTS_DIR / layout.SPEECH_DECODER_DIR
    onnx = WORK / "flow_decoder.onnx"
    if not onnx.exists():
        from export.flow_onnx import export_flow_onnx

        write_decoder(WORK, "tiny", seed=0)
        export_flow_onnx(decoder_dir, onnx)
    return decoder_dir, onnx


def session(onnx: Path, setting: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = setting != "no-arena"
    run_options = ort.RunOptions()
    if setting == "shrinkage":
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"]), run_options


def feeds(decoder_dir: Path, n_tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    builder = Token2WavBase()
    builder.config = load_config(decoder_dir)
    rng = np.random.default_rng(seed)
    request = Token2WavRequest(
        rng.integers(0, 5120, n_tokens), rng.integers(0, 5120, 50),
        rng.standard_normal((103, 80)).astype(np.float32), rng.standard_normal(192).astype(np.float32),
    )
    request.validate(builder.config)
    return builder.flow_feeds([request], [DecoderNoise.from_seed(seed, 103, n_tokens, builder.config).flow])


def rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS")


def memory(setting: str, large: int) -> None:
    decoder_dir, onnx = prepare()
    ort_session, run_options = session(onnx, setting)
    small = feeds(decoder_dir, 100)
    for _ in range(3):
        ort_session.run(None, small, run_options)
    warm = rss_mb()
    ort_session.run(None, feeds(decoder_dir, large), run_options)
    after = rss_mb()
    for _ in range(3):
        ort_session.run(None, small, run_options)
    print(f"{setting:10s} RSS warm {warm} MB, after {large} ids {after} MB, after 3 more small {rss_mb()} MB", flush=True)


def speed(repeats: int) -> None:
    decoder_dir, onnx = prepare()
    sessions = {setting: session(onnx, setting) for setting in SETTINGS}
    inputs = {n: feeds(decoder_dir, n) for n in (100, 1000)}
    times = {(setting, n): [] for setting in SETTINGS for n in inputs}
    for _ in range(repeats):
        for setting, (ort_session, run_options) in sessions.items():
            for n, feed in inputs.items():
                start = time.perf_counter()
                ort_session.run(None, feed, run_options)
                times[setting, n].append(time.perf_counter() - start)
    for setting in SETTINGS:
        medians = ", ".join(f"{n} ids {np.median(times[setting, n]) * 1000:.0f} ms" for n in inputs)
        print(f"{setting:10s} median of {repeats}: {medians}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", choices=SETTINGS, help=argparse.SUPPRESS)  # one setting, in a fresh process
    args = parser.parse_args()
    if args.memory:
        memory(args.memory, args.large)
        return
    prepare()
    for setting in SETTINGS:
        subprocess.run([sys.executable, __file__, "--memory", setting, "--large", str(args.large)], check=True)
    speed(args.repeats)


if __name__ == "__main__":
    main()
