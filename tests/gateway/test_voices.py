"""Uploaded voices: any common format and rate → SQLite → PROMPT_AUDIO with each request; survive a restart; a
quota per owner; hostile files refused before they cost memory (the decoder's own tests: test_audio_bounds.py)."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import openai
import pytest
import soundfile

from gateway.audio import encode_whole
from gateway.errors import APIError
from gateway.voices import VoiceInfo, VoiceQuota, VoiceStore
from stepaudio.testing.voices import synthetic_voice
from tests.gateway.helpers import API_KEY
from tests.gateway.test_audio_bounds import PEAK_BOUND_MB, flac, with_total_samples

live = pytest.mark.server  # the store's own tests below need no server


def wav_file(seconds=2.0, rate=16000, fmt="WAV", seed=3, wave=None) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, synthetic_voice(seconds, seed=seed, sample_rate=rate) if wave is None else wave, rate, format=fmt)
    return out.getvalue()


def upload(http, data: bytes, filename="me.wav", transcript="我的声音", **fields):
    return http.post("/v1/audio/voices", files={"file": (filename, data)}, data={"transcript": transcript, **fields})


def say(client, voice: str, seed=4) -> bytes:
    return client.audio.speech.create(model="step-audio-tts", input="你好", voice=voice, response_format="pcm",
                                      extra_body={"seed": seed}).content


@live
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


@live
def test_voices_belong_to_their_key(start_gateway):
    import httpx2 as httpx

    gateway = start_gateway(keys=(API_KEY, "other-key"))
    mine = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"})
    theirs = httpx.Client(base_url=gateway.url, headers={"Authorization": "Bearer other-key"})
    voice = upload(mine, wav_file()).json()["id"]
    assert voice not in [v["id"] for v in theirs.get("/v1/audio/voices").json()["data"]]
    assert theirs.delete(f"/v1/audio/voices/{voice}").status_code == 404
    assert voice in [v["id"] for v in mine.get("/v1/audio/voices").json()["data"]]


@live
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


@live
@pytest.mark.parametrize("data, fields, status, message", [
    (b"not audio at all" * 10, {}, 400, "could not decode"),
    (with_total_samples(flac(1.0), 10 * 3600 * 48000), {}, 400, "audio is 36000.00 s"),  # issue #23's 10 h FLAC
    (wav_file(12.0), {}, 400, "allowed 0.5–10 s"),
    (wav_file(wave=0.1 * np.sin(np.arange(3200) / 10.0), rate=16000), {}, 400, "allowed 0.5–10 s"),  # 0.2 s
    (wav_file(2.0, 48000, "WAV") * 4, {}, 413, "larger than 600000 bytes"),
    (wav_file(), {"transcript": ""}, 400, "'transcript'"),
])
def test_bad_uploads_are_refused(http, data, fields, status, message):
    response = upload(http, data, **({"transcript": "我的声音"} | fields))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@live
def test_hostile_uploads_are_refused_within_the_memory_bound(start_gateway):
    """Issue #23: a small file that claims or holds hours of audio took the gateway to 22 GB; files that make FFmpeg
    open playlists or listeners blocked a worker. Each is a quick 400 now, and the gateway's peak RSS stays within
    PEAK_BOUND_MB of its own after a normal upload."""
    import httpx2 as httpx

    gateway = start_gateway()
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert upload(http, wav_file(2.0, 48000)).status_code == 201  # warm: FFmpeg loaded, a decode done
    baseline = _peak_rss_mb(gateway.process.pid)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    port = udp.getsockname()[1]
    hostile = {
        # ≈ 460 MB of float32 decoded whole before; refused by its header now, in the one duration wording
        "10 min 48 kHz stereo flac": (flac(600.0), "audio is 600.00 s; allowed 0.5–10 s"),
        # no length in the header: the decoder stops at the gateway's 10 s, and the wording stays the same
        "the same, total_samples 0": (with_total_samples(flac(600.0), 0), "audio is longer than 10 s; allowed 0.5–10 s"),
        "sdp": (f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 0\r\n".encode(), "could not decode"),
        "hls": (f"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:{port}/a.ts\n".encode(), "could not decode"),
    }
    for name, (data, message) in hostile.items():
        start = time.monotonic()
        response = upload(http, data, "x.wav")
        assert response.status_code == 400 and message in response.json()["error"]["message"], (name, response.text)
        expected_code = "invalid_audio_duration" if "allowed" in message else "invalid_audio"
        assert response.json()["error"]["code"] == expected_code, (name, response.text)
        assert time.monotonic() - start < 10, name  # a refusal, not a wait on a socket
    with pytest.raises(BlockingIOError):
        udp.recv(1)
    assert _peak_rss_mb(gateway.process.pid) - baseline < PEAK_BOUND_MB
    assert upload(http, wav_file(1.0)).status_code == 201  # and it still serves


@live
def test_voice_quota_per_owner(start_gateway):
    import httpx2 as httpx

    def stored_bytes(seconds: float) -> int:  # float32 samples as the store keeps them (synthetic_voice pads silence)
        return synthetic_voice(seconds, seed=0, sample_rate=16000).size * 4

    quota = 2 * stored_bytes(2.0)  # two 2 s voices fit exactly; a 2 s and a 3 s do not
    assert stored_bytes(2.0) + stored_bytes(3.0) > quota >= stored_bytes(2.0) + stored_bytes(1.0)
    gateway = start_gateway("--max-voices", "2", "--max-voice-bytes", str(quota))
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    first, second = (upload(http, wav_file(2.0, seed=s)) for s in (1, 2))
    assert first.status_code == second.status_code == 201
    third = upload(http, wav_file(1.0))
    assert third.status_code == 429 and third.json()["error"]["code"] == "voice_quota_exceeded", third.text
    assert "at most 2 voices" in third.json()["error"]["message"]
    assert http.delete(f"/v1/audio/voices/{first.json()['id']}").status_code == 200
    too_big = upload(http, wav_file(3.0))
    assert too_big.status_code == 429 and f"{quota} allowed" in too_big.json()["error"]["message"], too_big.text
    assert upload(http, wav_file(1.0)).status_code == 201
    listed = [v for v in http.get("/v1/audio/voices").json()["data"] if v["type"] == "uploaded"]
    assert len(listed) == 2 and second.json() in listed


# ---- the store itself ------------------------------------------------------------------------------------------
def test_quota_holds_under_concurrent_adds(tmp_path):
    store = VoiceStore(tmp_path / "voices.sqlite3", VoiceQuota(max_voices=3, max_bytes=10**9))
    samples = np.zeros(1600, np.float32)
    outcomes: list[str] = []

    def add():
        try:
            store.add("alice", "v", "t", samples, 16000)
            outcomes.append("added")
        except APIError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=add) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["added"] * 3 + ["voice_quota_exceeded"] * 9
    assert store.usage("alice") == (3, 3 * 1600 * 4) and store.usage("bob") == (0, 0)
    store.add("bob", "v", "t", samples, 16000)  # the quota is per owner
    store.close()


def test_owner_is_stored_as_given_and_listing_reads_no_samples(tmp_path):
    store = VoiceStore(tmp_path / "voices.sqlite3")
    voice = store.add("team:alice", "me", "我的声音", np.linspace(-1, 1, 8000, dtype=np.float32), 16000)
    listed = store.list("team:alice")
    assert [type(v) for v in listed] == [VoiceInfo] and not hasattr(listed[0], "samples")
    assert listed[0].public() == voice.public() and listed[0].seconds == 0.5
    raw = store._db().execute("SELECT DISTINCT owner FROM voices").fetchall()
    assert raw == [("team:alice",)]  # not hashed again
    store.close()


def test_a_long_write_does_not_block_readers(tmp_path):
    """One connection per thread (WAL): while one request holds the write lock, others list and fetch."""
    store = VoiceStore(tmp_path / "voices.sqlite3")
    voice = store.add("alice", "me", "t", np.ones(1600, np.float32), 16000)
    holding, release = threading.Event(), threading.Event()

    def slow_writer():
        db = store._db()
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM voices WHERE owner = 'alice'")
        holding.set()
        release.wait(30)
        db.execute("ROLLBACK")

    writer = threading.Thread(target=slow_writer)
    writer.start()
    try:
        assert holding.wait(10)
        start = time.monotonic()
        assert [v.id for v in store.list("alice")] == [voice.id]  # the committed state, at once
        assert store.get("alice", voice.id).samples.size == 1600
        assert time.monotonic() - start < 2.0
    finally:
        release.set()
        writer.join()
    store.close()
