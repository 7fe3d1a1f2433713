"""/v1/audio/speech through the official openai client against the live gateway and tritonserver."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import openai
import pytest
import soundfile

from gateway.audio import decode_audio
from stepaudio.decoder.token2wav import mel_frames_for_tokens
from tests.gateway.helpers import TOKENS

pytestmark = pytest.mark.server
SAMPLES = 256 * mel_frames_for_tokens(TOKENS)  # one request's audio at 22.05 kHz
SPEECH = {"model": "step-audio-tts", "input": "你好，世界。", "voice": "Tingting"}


def speech(client, **overrides) -> bytes:
    args = {**SPEECH, "response_format": "wav", **overrides}
    extra = {k: args.pop(k) for k in ("seed", "max_new_tokens") if k in args}
    return client.audio.speech.create(**args, extra_body=extra or None).content


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


@pytest.mark.parametrize("fmt, rate", [("wav", 22050), ("flac", 22050), ("mp3", 22050), ("aac", 22050), ("opus", 48000)])
def test_each_format_decodes_to_the_generated_audio(client, fmt, rate):
    data = speech(client, response_format=fmt, seed=5)
    if fmt in ("wav", "flac"):
        wave, got_rate = soundfile.read(io.BytesIO(data), dtype="float32")
        assert got_rate == rate and wave.size == SAMPLES
        reference = pcm(speech(client, response_format="pcm", seed=5))
        np.testing.assert_allclose(wave, reference, atol=1e-4)  # same seed, same samples (s16 either way)
    else:
        wave, got_rate = decode_audio(data)  # FFmpeg via PyAV
        assert got_rate == rate
        # Lossy codecs add their encoder delay/padding (< 0.1 s); opus is encoded at 24 kHz (no 22.05 kHz mode) and
        # decodes at 48 kHz, as every Opus decoder does.
        assert abs(wave.shape[1] / rate - SAMPLES / 22050) < 0.1
        assert np.abs(wave).max() > 0.01


def test_pcm_is_s16le_at_22050(client):
    data = speech(client, response_format="pcm", seed=5)
    assert len(data) == 2 * SAMPLES


def test_streamed_audio_arrives_in_chunks_and_joins_to_the_offline_bytes(client):
    with client.audio.speech.with_streaming_response.create(
        **SPEECH, response_format="pcm", extra_body={"seed": 21, "max_new_tokens": 120}
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["x-sample-rate"] == "22050"
        chunks = list(response.iter_bytes())
    assert len(chunks) >= 2, "audio must leave while the LLM still generates"
    whole = speech(client, response_format="pcm", seed=21, max_new_tokens=120)
    assert b"".join(chunks) == whole
    assert len(whole) == 2 * 256 * mel_frames_for_tokens(120)


def test_sse_deltas_then_done(client):
    with client.audio.speech.with_streaming_response.create(
        **SPEECH, response_format="pcm", stream_format="sse", extra_body={"seed": 21, "max_new_tokens": 120}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    types = [event["type"] for event in events]
    assert types[-1] == "speech.audio.done" and set(types[:-1]) == {"speech.audio.delta"} and len(types) >= 3
    audio = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    assert audio == speech(client, response_format="pcm", seed=21, max_new_tokens=120)
    assert events[-1]["usage"]["audio_bytes"] == len(audio)


def test_style_tags_and_speed_change_the_prompt(client):
    plain = speech(client, response_format="pcm", seed=8)
    assert speech(client, response_format="pcm", seed=8) == plain  # deterministic given the seed
    assert speech(client, response_format="pcm", seed=8, instructions="高兴1, 四川话") != plain
    assert speech(client, response_format="pcm", seed=8, speed=1.6) != plain
    rap = speech(client, response_format="pcm", seed=8, instructions="(RAP)")  # routed to the music decoder
    assert len(rap) == 2 * SAMPLES


@pytest.mark.parametrize("overrides, status, param, message", [
    ({"instructions": "开心"}, 400, "instructions", "unknown style tags"),
    ({"instructions": "RAP", "speed": 2.0}, 400, "speed", "music decoder has no speed tags"),
    ({"speed": 5.0}, 400, "speed", "less than or equal to 4"),
    ({"voice": "Nobody"}, 400, None, "unknown speaker 'Nobody'"),
    ({"voice": "voice_0123"}, 404, "voice", "does not exist"),
    ({"model": "no-such-model"}, 404, "model", "does not exist"),
    ({"input": "字" * 201}, 400, "input", "the limit is 200"),
    ({"max_new_tokens": 2001}, 400, "max_new_tokens", "at most 2000"),
    ({"response_format": "ogg"}, 400, "response_format", "Input should be"),
])
def test_refusals_are_openai_errors(client, overrides, status, param, message):
    with pytest.raises(openai.APIStatusError) as info:
        speech(client, **overrides)
    assert info.value.status_code == status
    error = info.value.body if "message" in info.value.body else info.value.body["error"]
    assert message in error["message"] and error["param"] == param and error["type"]
