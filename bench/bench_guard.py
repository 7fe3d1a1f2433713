"""How long the HTTP guard takes to refuse a hostile body of each shape, and how slow the canary got meanwhile.

    python bench/bench_guard.py [--mib 64]

Starts the smoke repository's server (tests/server/smoke_repository), sends each shape of
``tests/server/front_door_helpers.hostile_bodies`` to generate_stream, infer and a JSON admin path, and prints one
line per shape and path: status, seconds to refusal (upload included). Timings live here, never in tests."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from stepaudio_server.launcher import TritonServer
from tests.server.front_door_helpers import MIB, Canary, hostile_bodies, post
from tests.server.helpers import write_smoke_onnx

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("/v2/models/smoke_stream/generate_stream", "/v2/models/smoke_scale/infer", "/v2/repository/index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(ROOT / "tests/server/smoke_repository", repo)
        (repo / "README.md").unlink()
        write_smoke_onnx(repo / "smoke_onnx" / "1" / "model.onnx")
        with TritonServer(repo, log_path=Path(tmp) / "server.log") as server, Canary(server.http_url) as canary:
            print(f"{'shape':16s} {'path':42s} status  seconds")
            for shape, body in hostile_bodies(args.mib * MIB).items():
                for path in PATHS:
                    started = time.perf_counter()
                    status, _ = post(server.http_url, path, body)
                    print(f"{shape:16s} {path:42s} {status:6d} {time.perf_counter() - started:8.2f}", flush=True)
            print(f"canary: {canary.rounds} rounds, slowest answer {canary.worst_s:.2f} s, "
                  f"{len(canary.failures)} failures; server pid unchanged: {server.process.poll() is None}")


if __name__ == "__main__":
    main()
