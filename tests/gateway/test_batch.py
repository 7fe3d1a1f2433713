"""The batch runner through the OpenAI-compatible gateway: the same manifest as over gRPC, each distinct prompt file
uploaded once (and the uploads deleted at the end), audio equal to a single ``/v1/audio/speech`` request with the same
seed, a bad item recorded; chat mode writes the replies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from clients import batch
from tests.gateway.helpers import API_KEY

pytestmark = pytest.mark.server
DATA = Path(__file__).resolve().parents[1] / "data"
CLONE_TEXT = "The quick brown fox jumps over the lazy dog by the river."
TOKENS = 30


def _uploads(http) -> float:
    text = http.get("/metrics").text
    pattern = r'gateway_requests_total\{[^}]*route="/v1/audio/voices"[^}]*\} ([0-9.]+)'
    lines = [line for line in text.splitlines() if 'method="POST"' in line and 'status="201"' in line]
    return sum(float(m.group(1)) for line in lines if (m := re.match(pattern, line)))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_a_mixed_manifest_through_the_gateway(gateway, http, tmp_path):
    rows = [
        {"id": "preset", "text": "你好，世界。", "voice": "Tingting", "seed": 41},
        {"id": "clone1", "text": "Hello there.", "prompt_audio": str(DATA / "speech_en_16k.wav"),
         "prompt_text": CLONE_TEXT, "seed": 42},
        {"id": "clone2", "text": "Good night.", "prompt_audio": str(DATA / "speech_en_16k.wav"),
         "prompt_text": CLONE_TEXT, "seed": 43},
        {"id": "bad", "text": "谁也不是。", "voice": "Nobody"},
    ]
    uploads_before = _uploads(http)
    voices_before = len(http.get("/v1/audio/voices").json()["data"])
    out = tmp_path / "out"
    argv = [str(_jsonl(tmp_path / "m.jsonl", rows)), "--out", str(out), "--base-url", gateway.url + "/v1",
            "--api-key", API_KEY, "--max-new-tokens", str(TOKENS), "--quiet"]
    assert batch.main(argv) == 2
    records = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert records["bad"]["status"] == "failed" and "Nobody" in records["bad"]["error"]
    assert all(records[name]["status"] == "done" for name in ("preset", "clone1", "clone2"))
    assert _uploads(http) - uploads_before == 1  # one distinct prompt file, uploaded once
    assert len(http.get("/v1/audio/voices").json()["data"]) == voices_before  # and deleted at the end
    single = http.post("/v1/audio/speech", json={"model": "step-audio-tts", "input": "你好，世界。", "voice": "Tingting",
                                                 "response_format": "pcm", "seed": 41, "max_new_tokens": TOKENS})
    assert single.status_code == 200
    expected = np.frombuffer(single.content, "<i2").astype(np.float32) / 32768
    wave, rate = soundfile.read(out / records["preset"]["path"], dtype="float32")
    assert rate == 22050 and wave.size > 0
    np.testing.assert_allclose(wave, expected, atol=2 / 32768)


def test_chat_mode_through_the_gateway(gateway, tmp_path):
    out = tmp_path / "chat"
    prompts = _jsonl(tmp_path / "c.jsonl", [{"id": "q1", "text": "你好吗？", "seed": 5}])
    argv = [str(prompts), "--out", str(out), "--chat", "--base-url", gateway.url, "--api-key", API_KEY, "--quiet",
            "--format", "mp3"]
    assert batch.main(argv) == 0
    record = json.loads((out / "results.jsonl").read_text())
    assert record["status"] == "done" and record["reply_text"] and record["format"] == "mp3"
    wave, rate = soundfile.read(out / record["path"], dtype="float32")
    assert wave.size > 0 and rate == record["sample_rate"]
