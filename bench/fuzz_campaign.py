"""The long fuzz campaign (issue #23) against a launcher and a gateway this script starts.

    .venv/bin/python bench/fuzz_campaign.py --repository build/model_repository --requests 100000 [--seed S]

The server runs as ``python -m stepaudio_server`` (its own process: the guard does not share this script's GIL, and
the launcher's restarts show in its output), the gateway as ``python -m gateway`` with one API key. Requests come
from the grammar of tests/fuzz/strategies.py; invariants and what counts as a failure: docs/fuzzing.md.
Prints requests tried, crashes, hangs, 5xx, the canary's max latency, RSS before/after, per-surface counts, the
first example of each failure class, and writes the whole summary as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.process import GatewayProcess  # noqa: E402
from stepaudio_server.launcher import PROJECT_ROOT, free_port  # noqa: E402
from tests.fuzz.campaign import run_campaign  # noqa: E402
from tests.fuzz.conftest import API_KEY, GATEWAY_ARGS, cap_address_space  # noqa: E402
from tests.fuzz.harness import Stack  # noqa: E402


def start_launcher(repository: Path, folder: Path, timeout: float = 600.0) -> tuple[subprocess.Popen, int, int, Path, Path]:
    """``python -m stepaudio_server`` on free ports; returns (process, guard port, grpc port, server log, output)."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    server_log, output = folder / "server.log", folder / "launcher.out"
    command = [sys.executable, "-m", "stepaudio_server", "--model-repository", str(repository), "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--log-file", str(server_log),
               "--max-body-bytes", str(16 << 20), "--timeout", str(timeout)]
    with open(output, "w") as sink:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, STEPAUDIO_ADMIN_KEY=os.urandom(12).hex()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the launcher exited with {process.returncode}:\n{output.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process, http, grpc, server_log, output
        except OSError:
            pass
        time.sleep(1)
    process.terminate()
    raise RuntimeError(f"the launcher was not ready within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "build" / "model_repository")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4, help="sending threads")
    parser.add_argument("--canary-every", type=float, default=10.0, help="seconds between canary TTS requests")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "report" / "fuzz_campaign.json")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="stepaudio-fuzz-"))
    launcher, http, grpc, server_log, output = start_launcher(args.repository, folder)
    try:
        with GatewayProcess(f"127.0.0.1:{grpc}", folder / "voices.sqlite3", folder / "gateway.log", *GATEWAY_ARGS,
                            keys=(API_KEY,)) as gateway:
            cap_address_space(gateway.process.pid)
            stack = Stack(("127.0.0.1", http), ("127.0.0.1", gateway.port),
                          {"server": launcher, "gateway": gateway.process}, server_log, API_KEY, output)

            def progress(sent: int, summary, seconds: float) -> None:
                tally = summary.tally
                print(f"{sent:>7} sent  {tally.total:>7} answered  {tally.total / seconds:6.1f}/s  "
                      f"failures {sum(tally.failures.values())}  service problems {sum(tally.service.values())}",
                      flush=True)

            summary = run_campaign(stack, args.requests, args.seed, workers=args.workers,
                                   canary_every=args.canary_every, progress=progress)
    finally:
        launcher.terminate()
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
    report = summary.as_dict()
    report["logs"] = str(folder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"\nrequests tried     {report['requests_tried']} in {report['seconds']} s ({report['requests_per_s']}/s)")
    print(f"crashes            {report['crashes']}")
    print(f"hangs              {report['hangs']}")
    print(f"5xx                {report['http_5xx']}")
    print(f"failing requests   {sum(report['failures'].values())}")
    print(f"service problems   {report['service_problems']}")
    print(f"canary             {report['canaries']} runs, max {report['max_canary_s']} s, "
          f"unchanged: {report['canary_unchanged']}")
    print(f"readiness max      {report['max_ready_s']} s")
    print(f"RSS MiB            before {report['rss_before_mib']}  max {report['rss_max_mib']}  "
          f"after {report['rss_after_mib']}")
    print(f"per surface        {report['per_surface']}")
    if report["stopped_early"]:
        print(f"stopped early      {report['stopped_early']}")
    for key, count in sorted(report["failures"].items(), key=lambda item: -item[1]):
        print(f"\n{key} (×{count})\n  {report['examples'][key][:800]}")
    print(f"\nsummary: {args.out}   logs: {folder}")
    return 1 if summary.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
