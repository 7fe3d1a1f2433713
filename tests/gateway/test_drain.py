"""SIGTERM drains: a stream that started before the signal runs to its end (same bytes as an undisturbed run),
the gateway takes no new connection meanwhile, and it exits cleanly."""

from __future__ import annotations

import signal
import time

import httpx2 as httpx
import pytest

from tests.gateway.helpers import API_KEY

pytestmark = pytest.mark.server
SPEECH = {"model": "step-audio-tts", "input": "你好，世界。", "voice": "Tingting", "response_format": "pcm", "seed": 4,
          "max_new_tokens": 120}


def test_sigterm_lets_a_running_stream_finish(start_gateway):
    gateway = start_gateway("--drain-timeout", "120")
    client = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=180)
    start = time.monotonic()
    reference = client.post("/v1/audio/speech", json=SPEECH).content
    assert len(reference) > 0 and time.monotonic() - start > 1.0  # long enough to be running at the signal
    with client.stream("POST", "/v1/audio/speech", json=SPEECH) as running:
        assert running.status_code == 200
        chunks = running.iter_raw()
        received = [next(chunks)]
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # draining: no new connections
            httpx.get(gateway.url + "/health", timeout=5)
        received.extend(chunks)  # an incomplete chunked body would raise here
    assert b"".join(received) == reference
    # uvicorn re-raises the signal it handled once it has shut down, so the exit is "killed by SIGTERM", after the drain
    assert gateway.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Finished server process" in gateway.log_tail()
