"""The user-facing TTS CLI against the live server: HTTP ``generate_stream`` and gRPC streaming give the same audio,
the offline call the same length, and a server-side refusal reaches the user as a message."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from clients import tts as tts_cli
from stepaudio.decoder.token2wav import mel_frames_for_tokens

pytestmark = pytest.mark.server
MAX_NEW_TOKENS = 60


def _run(triton_server, tmp_path, protocol: str, *extra: str) -> tuple[np.ndarray, int]:
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    out = tmp_path / f"{protocol}{'_'.join(extra)}.wav"
    argv = ["--url", url, "--protocol", protocol, "--text", "你好，世界。", "--speaker", "Tingting", "--seed", "31",
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--out", str(out), *extra]
    assert tts_cli.main(argv) == 0
    wave, rate = soundfile.read(out, dtype="float32")
    return wave, rate


def test_tts_cli_streams_the_same_audio_over_http_and_grpc(triton_server, tmp_path, capsys):
    http_wave, http_rate = _run(triton_server, tmp_path, "http", "--stream")
    assert "first chunk" in capsys.readouterr().out
    grpc_wave, grpc_rate = _run(triton_server, tmp_path, "grpc", "--stream")
    offline_wave, offline_rate = _run(triton_server, tmp_path, "http")
    assert http_rate == grpc_rate == offline_rate == 22050
    assert http_wave.size > 0 and http_wave.size % 256 == 0
    assert http_wave.size <= 256 * mel_frames_for_tokens(MAX_NEW_TOKENS)
    np.testing.assert_allclose(http_wave, grpc_wave, atol=1e-4)  # same seed, same ids, same noise
    assert offline_wave.size == http_wave.size


def test_tts_cli_reports_the_servers_message(triton_server, tmp_path, capsys):
    argv = ["--url", triton_server.http_url, "--text", "你好", "--speaker", "Nobody", "--out", str(tmp_path / "x.wav")]
    assert tts_cli.main(argv) == 1
    assert "unknown speaker 'Nobody'" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
