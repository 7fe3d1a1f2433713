"""The README's perf_analyzer commands (``bench/perf_analyzer.sh``, the tritonclient 2.51 binary) against the live
server: ensemble_tts over HTTP through the guard with ``-b 1``, tts_stream over gRPC streaming, both with the admin
key (perf_analyzer reads model configs). Request-count mode keeps each run to a few requests."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.server
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "perf_analyzer.sh"


def run_perf_analyzer(server, model: str, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, STEPAUDIO_HTTP_URL=server.http_url, STEPAUDIO_GRPC_URL=server.grpc_url,
               STEPAUDIO_ADMIN_KEY=server.admin_key if key is None else key,
               STEPAUDIO_GRPC_ADMIN_KEY=server.grpc_admin_key if key is None else key, PERF_MAX_NEW_TOKENS="40")
    return subprocess.run([str(SCRIPT), model, "--request-count", "4", "--concurrency-range", "2", *args],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model", ["ensemble_tts", "tts_stream"])
def test_perf_analyzer_reports_throughput_and_latency(triton_server, model):
    done = run_perf_analyzer(triton_server, model)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    throughput = re.search(r"Concurrency: 2, throughput: ([\d.]+) infer/sec, latency (\d+) usec", done.stdout)
    assert throughput, done.stdout[-3000:]
    assert float(throughput[1]) > 0 and int(throughput[2]) > 0
    assert re.search(r"p95 latency: \d+ usec", done.stdout)
    assert re.search(r"Request count: 4\b", done.stdout)


def test_perf_analyzer_without_the_admin_key_is_refused(triton_server):
    done = run_perf_analyzer(triton_server, "tts_stream", key="")
    assert done.returncode != 0
    assert "restricted" in done.stdout + done.stderr
