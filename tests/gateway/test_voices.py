"""Uploaded voices: any common format and rate → SQLite → PROMPT_AUDIO with each request; survive a restart."""

from __future__ import annotations

import io

import numpy as np
import openai
import pytest
import soundfile

from gateway.audio import encode_whole
from stepaudio.testing.voices import synthetic_voice
from tests.gateway.helpers import API_KEY

pytestmark = pytest.mark.server


def wav_file(seconds=2.0, rate=16000, fmt="WAV", seed=3, wave=None) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, synthetic_voice(seconds, seed=seed, sample_rate=rate) if wave is None else wave, rate, format=fmt)
    return out.getvalue()


def upload(http, data: bytes, filename="me.wav", transcript="我的声音", **fields):
    return http.post("/v1/audio/voices", files={"file": (filename, data)}, data={"transcript": transcript, **fields})


def say(client, voice: str, seed=4) -> bytes:
    return client.audio.speech.create(model="step-audio-tts", input="你好", voice=voice, response_format="pcm",
                                      extra_body={"seed": seed}).content


def test_upload_use_delete(http, client):
    recording = synthetic_voice(2.0, seed=5, sample_rate=44100)
    created = upload(http, encode_whole("mp3", recording, 44100), "me.mp3", name="me")  # a format only FFmpeg reads
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["id"].startswith("voice_") and voice["sample_rate"] == 44100 and voice["name"] == "me"
    assert abs(voice["seconds"] - recording.size / 44100) < 0.1  # mp3 adds its encoder delay
    flac = upload(http, wav_file(1.5, 8000, "FLAC"), "low.flac").json()
    assert flac["sample_rate"] == 8000

    listed = [v["id"] for v in http.get("/v1/audio/voices").json()["data"]]
    assert "Tingting" in listed and voice["id"] in listed and flac["id"] in listed
    cloned = say(client, voice["id"])
    assert cloned and cloned != say(client, "Tingting")  # the prompt audio reached the model
    assert say(client, flac["id"]) != cloned

    assert http.delete(f"/v1/audio/voices/{voice['id']}").json()["deleted"] is True
    assert voice["id"] not in [v["id"] for v in http.get("/v1/audio/voices").json()["data"]]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        say(client, voice["id"])
    gone = http.delete(f"/v1/audio/voices/{voice['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "voice_not_found"


def test_voices_belong_to_their_key(start_gateway):
    import httpx2 as httpx

    gateway = start_gateway(keys=(API_KEY, "other-key"))
    mine = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"})
    theirs = httpx.Client(base_url=gateway.url, headers={"Authorization": "Bearer other-key"})
    voice = upload(mine, wav_file()).json()["id"]
    assert voice not in [v["id"] for v in theirs.get("/v1/audio/voices").json()["data"]]
    assert theirs.delete(f"/v1/audio/voices/{voice}").status_code == 404
    assert voice in [v["id"] for v in mine.get("/v1/audio/voices").json()["data"]]


def test_uploaded_voice_survives_a_gateway_restart(start_gateway, tmp_path):
    import httpx2 as httpx
    from openai import OpenAI

    db = tmp_path / "persist" / "voices.sqlite3"
    first = start_gateway(db=db)
    voice = upload(httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {API_KEY}"}), wav_file()).json()
    before = say(OpenAI(base_url=first.url + "/v1", api_key=API_KEY, max_retries=0), voice["id"])
    first.stop()
    second = start_gateway(db=db)
    listed = httpx.get(second.url + "/v1/audio/voices", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    assert [v for v in listed if v["id"] == voice["id"]] == [voice]
    assert say(OpenAI(base_url=second.url + "/v1", api_key=API_KEY, max_retries=0), voice["id"]) == before


@pytest.mark.parametrize("data, fields, status, message", [
    (b"not audio at all" * 10, {}, 400, "could not decode"),
    (wav_file(12.0), {}, 400, "allowed 0.5–10 s"),
    (wav_file(wave=0.1 * np.sin(np.arange(3200) / 10.0), rate=16000), {}, 400, "allowed 0.5–10 s"),  # 0.2 s
    (wav_file(2.0, 48000, "WAV") * 4, {}, 413, "larger than 600000 bytes"),
    (wav_file(), {"transcript": ""}, 400, "'transcript'"),
])
def test_bad_uploads_are_refused(http, data, fields, status, message):
    response = upload(http, data, **({"transcript": "我的声音"} | fields))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
