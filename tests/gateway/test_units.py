"""Gateway parts without a server: style tags and speed, limits, keys, the voice store, audio encoders."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from gateway.audio import StreamEncoder, decode_audio, encode_whole
from gateway.chat import ChatRequest, chat_tensors
from gateway.config import Settings
from gateway.errors import APIError
from gateway.limits import Auth, Limiter, key_id
from gateway.speech import speed_tag, styled_text
from gateway.voices import VoiceStore


@pytest.mark.parametrize("speed, tag", [(0.25, "慢速2"), (0.8, "慢速1"), (1.0, None), (1.09, None), (1.3, "快速1"), (4.0, "快速2")])
def test_speed_maps_to_the_model_speed_tags(speed, tag):
    assert speed_tag(speed) == tag


def test_styled_text_puts_the_music_tag_first_and_each_tag_once():
    assert styled_text("(高兴1)你好", "四川话, 高兴1", 1.0) == "(高兴1)(四川话)你好"
    assert styled_text("你好", "高兴1 (RAP)", 1.0) == "(RAP)(高兴1)你好"
    assert styled_text("你好", None, 0.5) == "(慢速2)你好"
    for text, instructions, speed, param in (("(开心)你好", None, 1.0, "input"), ("你好", "RAP 哼唱", 1.0, "instructions"),
                                             ("(慢速1)你好", None, 1.5, "speed"), ("你好", "wow", 1.0, "instructions")):
        with pytest.raises(APIError) as info:
            styled_text(text, instructions, speed)
        assert info.value.status_code == 400 and info.value.param == param


def test_rate_limit_refills_and_says_when_to_retry():
    now = [0.0]
    limiter = Limiter(rate_per_minute=2, max_concurrent=10, clock=lambda: now[0])
    limiter.acquire("a").release()
    limiter.acquire("a").release()
    with pytest.raises(APIError) as info:
        limiter.acquire("a")
    assert info.value.status_code == 429 and info.value.headers["Retry-After"] == "30"
    limiter.acquire("b").release()  # other keys have their own bucket
    now[0] = 30.0
    limiter.acquire("a").release()


def test_concurrency_slots_are_released_once():
    limiter = Limiter(rate_per_minute=100, max_concurrent=1)
    lease = limiter.acquire("a")
    with pytest.raises(APIError, match="at most 1"):
        limiter.acquire("a")
    lease.release()
    lease.release()  # idempotent: must not free a slot someone else holds
    held = limiter.acquire("a")
    with pytest.raises(APIError):
        limiter.acquire("a")
    held.release()


def test_auth_accepts_only_configured_bearer_keys():
    auth = Auth(("k1", "k2"))
    assert auth.check("Bearer k2") == key_id("k2") != key_id("k1")
    for header in (None, "", "Bearer", "Bearer k3", "Basic k1", "k1"):
        with pytest.raises(APIError) as info:
            auth.check(header)
        assert info.value.status_code == 401
    assert Auth(()).check(None) == "anonymous"


def test_named_keys_share_one_principal():
    auth = Auth(("alice:sk-1", "alice:sk-2", "bob:sk-3", "bare-key"))
    assert auth.check("Bearer sk-1") == auth.check("Bearer sk-2") == "user:alice" != auth.check("Bearer sk-3")
    assert auth.check("Bearer bare-key") == key_id("bare-key")  # today's owners of bare keys stay as they were
    with pytest.raises(APIError):
        auth.check("Bearer alice:sk-1")  # the name is not part of the key
    with pytest.raises(ValueError, match="two different names"):
        Auth(("alice:sk-1", "bob:sk-1"))


def test_keys_are_required_off_loopback():
    Settings(triton_grpc="x", host="127.0.0.1").validate()
    Settings(triton_grpc="x", host="::1").validate()
    Settings(triton_grpc="x", host="0.0.0.0", api_keys=("k",)).validate()
    with pytest.raises(ValueError, match="without API keys"):
        Settings(triton_grpc="x", host="0.0.0.0").validate()


def test_voice_store_persists_exact_samples(tmp_path):
    samples = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    store = VoiceStore(tmp_path / "db" / "voices.sqlite3")
    voice = store.add("owner", "me", "我的声音", samples, 16000)
    store.close()
    again = VoiceStore(tmp_path / "db" / "voices.sqlite3")
    loaded = again.get("owner", voice.id)
    np.testing.assert_array_equal(loaded.samples, samples)  # same bytes → the server's voice cache hits
    assert loaded.transcript == "我的声音" and again.get("someone else", voice.id) is None
    assert again.delete("owner", voice.id) and not again.delete("owner", voice.id)
    assert again.list("owner") == []


def test_streamed_wav_and_pcm_carry_every_sample():
    wave = np.sin(np.arange(22050, dtype=np.float32) / 7) * 0.5
    for fmt in ("wav", "pcm"):
        encoder = StreamEncoder(fmt, 22050)
        data = b"".join(encoder.encode(part) for part in np.array_split(wave, 5)) + encoder.finish()
        if fmt == "wav":  # open-ended sizes while streaming; libsndfile still reads it
            decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
            assert rate == 22050
        else:
            decoded = np.frombuffer(data, "<i2") / 32767.0
        np.testing.assert_allclose(decoded, wave, atol=1e-4)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_compressed_streams_emit_bytes_before_the_end(fmt):
    wave = np.sin(np.arange(22050 * 2, dtype=np.float32) / 7) * 0.5
    encoder = StreamEncoder(fmt, 22050)
    early = b"".join(encoder.encode(part) for part in np.array_split(wave, 8))
    data = early + encoder.finish()
    assert early, "the encoder held everything until the end"
    decoded, _ = decode_audio(data)
    assert decoded.shape[0] == 1 and np.abs(decoded).max() > 0.3


def test_decode_reads_stereo_and_whole_files():
    stereo = np.stack([np.zeros(8000), np.ones(8000) * 0.25], axis=1).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, stereo, 8000, format="FLAC")
    wave, rate = decode_audio(out.getvalue())
    assert rate == 8000 and wave.shape == (1, 8000) and abs(wave.mean() - 0.125) < 1e-3  # downmixed while decoding
    flac, _ = decode_audio(encode_whole("flac", stereo[:, 1], 8000))
    assert flac.shape == (1, 8000)
    with pytest.raises(ValueError, match="could not decode"):
        decode_audio(b"\x00" * 100)


def test_chat_tensors_carry_the_reply_voice_and_skip_speech_for_text_only(tmp_path):
    """modalities ["text"] asks voice_chat_stream for no speech (REPLY_AUDIO false, no voice); with audio the reply
    voice is a preset SPEAKER or an uploaded voice's exact samples + transcript."""
    messages = [{"role": "user", "content": "你好"}]
    text_only = chat_tensors(ChatRequest(model="m", messages=messages), [], "你好", None, 8, 30)
    assert text_only["REPLY_AUDIO"].tolist() == [False]
    assert not {"SPEAKER", "PROMPT_AUDIO", "TTS_MAX_NEW_TOKENS"} & set(text_only)
    spoken = ChatRequest(model="m", messages=messages, modalities=["text", "audio"], audio={"voice": "Tingting"})
    preset = chat_tensors(spoken, [], "你好", None, 8, 30)
    assert preset["REPLY_AUDIO"].tolist() == [True] and preset["SPEAKER"][0] == b"Tingting"
    store = VoiceStore(tmp_path / "voices.sqlite3")
    samples = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    voice = store.add("owner", "me", "我的声音", samples, 16000)
    in_voice = ChatRequest(model="m", messages=messages, modalities=["text", "audio"], audio={"voice": voice.id})
    cloned = chat_tensors(in_voice, [], "你好", None, 8, 30, voice)
    assert "SPEAKER" not in cloned and cloned["PROMPT_TEXT"][0] == "我的声音".encode()
    np.testing.assert_array_equal(cloned["PROMPT_AUDIO"], samples)
    assert cloned["PROMPT_SAMPLE_RATE"].tolist() == [16000]
