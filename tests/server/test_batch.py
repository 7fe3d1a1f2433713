"""The batch runner against the live server over Triton gRPC: a mixed manifest (presets, tags, a cloned voice, a bad
item, a long text) gives the files and results it should, each item's audio equal to the single request
(``clients/tts.py``) with the same seed; a run killed with SIGKILL resumes with nothing lost or repeated; chat mode
writes Step-Audio-Chat's replies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from clients import batch
from clients import tts as tts_cli

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CLONE_TEXT = "The quick brown fox jumps over the lazy dog by the river."
TOKENS = 30  # speech ids per request: short audio keeps the tiny models' runs short


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _single_request(triton_server, tmp_path: Path, name: str, text: str, seed: int, *voice: str) -> np.ndarray:
    out = tmp_path / f"single_{name}.wav"
    argv = ["--url", triton_server.grpc_url, "--protocol", "grpc", "--text", text, "--seed", str(seed),
            "--max-new-tokens", str(TOKENS), "--out", str(out), *voice]
    assert tts_cli.main(argv) == 0
    return soundfile.read(out, dtype="float32")[0]


def test_a_mixed_manifest_over_grpc_equals_single_requests(triton_server, tmp_path):
    rows = [
        {"id": "preset", "text": "你好，世界。", "voice": "Tingting", "seed": 31},
        {"id": "tagged", "text": "今天天气很好。", "tags": "高兴1", "seed": 32},
        {"id": "clone", "text": "Hello there.", "prompt_audio": str(DATA / "speech_en_16k.wav"),
         "prompt_text": CLONE_TEXT, "seed": 33},
        {"id": "clone2", "text": "Good night.", "prompt_audio": str(DATA / "speech_en_16k.wav"),
         "prompt_text": CLONE_TEXT, "seed": 34},
        {"id": "bad", "text": "谁也不是。", "voice": "Nobody"},
        {"id": "long", "text": "第一句话就写在这里了。第二句话就写在这里了。第三句话就写在这里了。", "seed": 35},
    ]
    out = tmp_path / "out"
    argv = [str(_jsonl(tmp_path / "m.jsonl", rows)), "--out", str(out), "--triton-grpc", triton_server.grpc_url,
            "--max-new-tokens", str(TOKENS), "--max-chars", "20", "--quiet"]
    assert batch.main(argv) == 2  # one item failed
    records = {r["id"]: r for r in _results(out)}
    assert set(records) == {r["id"] for r in rows}
    assert records["bad"]["status"] == "failed" and "Nobody" in records["bad"]["error"]
    assert records["long"]["parts"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (5, 1)
    served = summary["statistics"]["ensemble_tts"]
    assert served["inferences"] in (4 + 3, 4 + 3 + 1) and served["executions"] <= served["inferences"]
    expected = {
        "preset": _single_request(triton_server, tmp_path, "preset", "你好，世界。", 31, "--speaker", "Tingting"),
        "tagged": _single_request(triton_server, tmp_path, "tagged", "(高兴1)今天天气很好。", 32, "--speaker", "Tingting"),
        "clone": _single_request(triton_server, tmp_path, "clone", "Hello there.", 33,
                                 "--prompt-wav", str(DATA / "speech_en_16k.wav"), "--prompt-text", CLONE_TEXT),
    }
    for name, single in expected.items():
        record = records[name]
        wave, rate = soundfile.read(out / record["path"], dtype="float32")
        assert record["status"] == "done" and rate == record["sample_rate"] == 22050 and wave.size > 0
        assert record["duration"] == pytest.approx(wave.size / rate, abs=1e-3)
        np.testing.assert_allclose(wave, single, atol=2 / 32768, err_msg=name)
    assert (out / "audio" / "metadata.jsonl").read_text().count("\n") == 5
    # resumed: nothing left but the bad item, which fails again
    assert batch.main(argv) == 2
    assert json.loads((out / "summary.json").read_text())["skipped"] == 5


def test_kill_9_mid_run_then_resume_over_grpc(triton_server, tmp_path):
    rows = [{"id": f"k{n:02d}", "text": f"第{n}个句子。", "seed": 100 + n} for n in range(10)]
    manifest = _jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "clients.batch", str(manifest), "--out", str(out), "--quiet", "--format", "flac",
               "--triton-grpc", triton_server.grpc_url, "--max-new-tokens", "20", "--concurrency", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    results = out / "results.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    killed_with = results.read_text().count("\n")
    assert 3 <= killed_with < 10, "the kill came too late to test anything"
    finished = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"skipped {killed_with}" in finished.stdout
    final = _results(out)
    assert sorted(r["id"] for r in final) == [r["id"] for r in rows]
    for record in final:
        wave, rate = soundfile.read(out / record["path"], dtype="float32")
        assert record["status"] == "done" and wave.size / rate == pytest.approx(record["duration"], abs=1e-3)
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted([f"{r['id']}.flac" for r in rows] +
                                                                      ["metadata.jsonl"])


def test_tts_stream_mode_and_chat_mode(triton_server, tmp_path):
    out = tmp_path / "stream"
    manifest = _jsonl(tmp_path / "s.jsonl", [{"id": "s1", "text": "你好，世界。", "seed": 31}])
    argv = [str(manifest), "--out", str(out), "--triton-grpc", triton_server.grpc_url, "--model", "tts_stream",
            "--max-new-tokens", str(TOKENS), "--quiet", "--sample-rate", "16000"]
    assert batch.main(argv) == 0
    record = _results(out)[0]
    assert record["sample_rate"] == 16000 and record["duration"] > 0
    chat_out = tmp_path / "chat"
    prompts = _jsonl(tmp_path / "c.jsonl", [{"id": "q1", "text": "你好吗？", "seed": 3},
                                            {"id": "q2", "text": "", "audio": str(DATA / "speech_zh_8k.wav"), "seed": 4}])
    argv = [str(prompts), "--out", str(chat_out), "--chat", "--triton-grpc", triton_server.grpc_url,
            "--max-new-tokens", "8", "--tts-max-new-tokens", "20", "--quiet"]
    assert batch.main(argv) == 0
    replies = {r["id"]: r for r in _results(chat_out)}
    assert all(r["status"] == "done" and r["reply_text"] and r["duration"] > 0 for r in replies.values())
    assert replies["q2"]["transcript"]  # the spoken turn's transcript comes back too
    metadata = [json.loads(line) for line in (chat_out / "audio" / "metadata.jsonl").read_text().splitlines()]
    assert {m["reply_text"] for m in metadata} == {r["reply_text"] for r in replies.values()}
