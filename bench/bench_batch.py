"""Batch synthesis throughput: the batch runner (``clients/batch.py``, adaptive concurrency) vs a sequential loop of
``clients/tts.py`` over the same items, in audio seconds per wall second, with Triton's per-model statistics.

    python bench/bench_batch.py [--model-repository build/model_repository] [--items 200] [--max-new-tokens 40]

Starts tritonserver on the rendered repository, warms it up, then runs the same manifest twice against
``ensemble_tts`` over gRPC: first as the loop a user would write (one ``clients.tts`` call per item, in this process,
so no interpreter start-ups are counted), then through the batch runner. Per phase it prints the audio made, the
wall time, audio s/s, and for each served model the executions and the requests they carried (requests per
execution > 1 = Triton's dynamic batcher merged requests). Writes the figures to ``--json`` too. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients import batch  # noqa: E402
from clients import tts as tts_cli  # noqa: E402
from clients.batch_transport import GrpcTransport, model_statistics  # noqa: E402
from stepaudio_server.launcher import TritonServer  # noqa: E402

SENTENCES = ["你好，世界。", "今天天气很好。", "我们一起去公园散步吧。", "这本书非常有意思。", "明天见。",
             "请把窗户打开。", "火车马上就要开了。", "谢谢你的帮助。"]


def manifest_rows(items: int) -> list[dict]:
    return [{"id": f"b{n:04d}", "text": SENTENCES[n % len(SENTENCES)], "seed": 1000 + n} for n in range(items)]


def statistics_delta(before: dict, after: dict) -> dict:
    delta = {}
    for name, now in after.items():
        executions = now["executions"] - before.get(name, {}).get("executions", 0)
        if executions:
            inferences = now["inferences"] - before.get(name, {}).get("inferences", 0)
            delta[name] = {"executions": executions, "inferences": inferences,
                           "requests_per_execution": round(inferences / executions, 2)}
    return delta


def sequential(url: str, rows: list[dict], tokens: int, folder: Path) -> dict:
    start, audio = time.perf_counter(), 0.0
    for row in rows:
        out = folder / f"{row['id']}.wav"
        argv = ["--url", url, "--protocol", "grpc", "--text", row["text"], "--speaker", "Tingting", "--seed",
                str(row["seed"]), "--max-new-tokens", str(tokens), "--out", str(out)]
        with contextlib.redirect_stdout(io.StringIO()):  # its one line per item
            status = tts_cli.main(argv)
        if status != 0:
            raise RuntimeError(f"clients.tts failed on {row['id']}")
        audio += soundfile.info(str(out)).duration
    wall = time.perf_counter() - start
    return {"items": len(rows), "audio_s": round(audio, 2), "wall_s": round(wall, 2), "audio_per_s": round(audio / wall, 3)}


def batched(url: str, manifest: Path, tokens: int, folder: Path, max_concurrency: int) -> tuple[dict, batch.Summary]:
    options = batch.BatchOptions(out_dir=folder, max_new_tokens=tokens, quiet=True, audiofolder=False)
    controller = batch.AdaptiveConcurrency(limit=2, maximum=max_concurrency)
    summary = batch.BatchRunner(GrpcTransport(url), options, controller, stats_url=url).run(manifest)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} items failed: see {folder / 'results.jsonl'}")
    figures = {"items": summary.done, "audio_s": round(summary.audio_seconds, 2), "wall_s": round(summary.wall_seconds, 2),
               "audio_per_s": round(summary.audio_per_second, 3), "settled_concurrency": summary.concurrency,
               "concurrency_history": [[limit, round(rate, 3)] for limit, rate, _ in summary.concurrency_history]}
    return figures, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=Path("build/bench/batch.json"))
    args = parser.parse_args(argv)
    if not (args.model_repository / "ensemble_tts").is_dir():
        print(f"error: {args.model_repository} is not a rendered repository (run make demo)", file=sys.stderr)
        return 2
    rows = manifest_rows(args.items)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, \
            TritonServer(args.model_repository, log_path=args.json.parent / "batch_server.log") as server:
        folder = Path(scratch)
        manifest = folder / "manifest.jsonl"
        manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        url = server.grpc_url
        sequential(url, rows[:4], args.max_new_tokens, folder)  # warm-up: first calls load lazily
        (folder / "seq").mkdir()
        start = model_statistics(url)
        loop = sequential(url, rows, args.max_new_tokens, folder / "seq")
        middle = model_statistics(url)
        runner, _ = batched(url, manifest, args.max_new_tokens, folder / "batch", args.max_concurrency)
        loop["statistics"] = statistics_delta(start, middle)
        runner["statistics"] = statistics_delta(middle, model_statistics(url))
    report = {"items": args.items, "max_new_tokens": args.max_new_tokens, "sequential": loop, "batch": runner,
              "ratio": round(runner["audio_per_s"] / loop["audio_per_s"], 2)}
    args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    for name, phase in (("sequential clients/tts.py", loop), ("clients/batch.py", runner)):
        print(f"{name:>26}: {phase['audio_s']:.1f} s of audio in {phase['wall_s']:.1f} s = {phase['audio_per_s']:.3f} audio s/s")
        for model, figures in sorted(phase["statistics"].items()):
            print(f"{'':>28}{model:<20} {figures['executions']:>5} executions, {figures['inferences']:>5} requests "
                  f"({figures['requests_per_execution']} per execution)")
    print(f"ratio {report['ratio']}x at settled concurrency {runner['settled_concurrency']} "
          f"(history {runner['concurrency_history']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
