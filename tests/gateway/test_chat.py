"""/v1/chat/completions in OpenAI's audio-chat shape through the openai client, backed by voice_chat_stream."""

from __future__ import annotations

import base64
import io

import openai
import pytest
import soundfile

from stepaudio.testing.voices import synthetic_voice
from tests.gateway.test_voices import upload, wav_file
from tests.server.helpers import BatchCounts

pytestmark = pytest.mark.server
AUDIO_OUT = {"modalities": ["text", "audio"], "audio": {"voice": "Tingting", "format": "wav"}}


def spoken_question() -> str:
    out = io.BytesIO()
    soundfile.write(out, synthetic_voice(1.5, seed=9, sample_rate=16000), 16000, format="WAV")
    return base64.b64encode(out.getvalue()).decode()


def test_audio_in_text_and_audio_out(client):
    completion = client.chat.completions.create(
        model="step-audio-chat", **AUDIO_OUT, seed=1,
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": spoken_question(), "format": "wav"}}]}],
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop" and message.content is None
    assert message.audio.transcript  # the reply text
    wave, rate = soundfile.read(io.BytesIO(base64.b64decode(message.audio.data)), dtype="float32")
    assert rate == 22050 and wave.size > 0 and wave.size % 256 == 0
    assert completion.model_extra["step_audio"]["user_transcript"]  # the chat model's ASR of the question


def test_streamed_text_and_audio_deltas(client):
    stream = client.chat.completions.create(
        model="step-audio-chat", modalities=["text", "audio"], audio={"voice": "Tingting", "format": "pcm16"},
        messages=[{"role": "user", "content": "你好"}], stream=True, seed=1,
    )
    text, audio, finish = [], [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        if delta.audio is not None:
            text.append(delta.audio.transcript or "")
            audio.append(base64.b64decode(delta.audio.data or ""))
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(text) and finish == "stop"
    pcm = b"".join(audio)
    assert len(pcm) > 0 and len(pcm) % (2 * 256) == 0  # whole s16 vocoder frames
    assert len([a for a in audio if a]) >= 1


def test_text_only_reply_runs_no_tts(client, triton_server):
    """modalities ["text"] (the default): the server is asked for no speech, so tts_stream and tts_llm see nothing."""
    chats, speech, speech_llm = (BatchCounts(triton_server, m) for m in ("voice_chat_stream", "tts_stream", "tts_llm"))
    completion = client.chat.completions.create(model="step-audio-chat", messages=[{"role": "user", "content": "你好"}], seed=1)
    message = completion.choices[0].message
    assert message.content and message.audio is None
    assert chats.settle(1)[0] == 1
    assert speech.settle(0)[0] == 0 and speech_llm.settle(0)[0] == 0


def _spoken_reply(client, voice: str) -> bytes:
    completion = client.chat.completions.create(
        model="step-audio-chat", modalities=["text", "audio"], audio={"voice": voice, "format": "pcm16"}, seed=3,
        messages=[{"role": "user", "content": "你好"}])
    return base64.b64decode(completion.choices[0].message.audio.data)


def test_reply_in_an_uploaded_voice(client, http, triton_server):
    """audio.voice = an uploaded voice id: its stored samples go to the server as the prompt voice of every reply
    sentence (the same seed gives the same audio again, and other audio than the preset speaker)."""
    voice = upload(http, wav_file(seconds=2.0, rate=24000, seed=11), transcript="这是我的声音").json()["id"]
    speech = BatchCounts(triton_server, "tts_stream")
    cloned = _spoken_reply(client, voice)
    assert len(cloned) > 0 and len(cloned) % (2 * 256) == 0
    assert speech.settle(1)[0] >= 1  # the reply was spoken by tts_stream
    assert _spoken_reply(client, voice) == cloned
    assert _spoken_reply(client, "Tingting") != cloned
    http.delete(f"/v1/audio/voices/{voice}")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _spoken_reply(client, voice)


@pytest.mark.parametrize("messages, extra, message", [
    ([{"role": "assistant", "content": "hi"}], {}, "last message must come from the user"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]},
      {"role": "user", "content": "再说一遍"}], {}, "only the last user message may carry audio"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}], {}, "not valid base64"),
    ([{"role": "user", "content": "你好"}], {"max_tokens": 9}, "at most 8"),
])
def test_bad_chat_requests_are_refused(client, messages, extra, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(model="step-audio-chat", messages=messages, **extra)


def test_a_chat_the_client_leaves_is_ended_with_cancel_not_a_grpc_cancel(start_gateway, triton_server):
    """compat.py ``in_band_grpc_cancel``: the gateway sends voice_chat_stream CANCEL with the turn's token (a second
    request to the model) instead of cancelling the running gRPC call; long caps keep the turn running."""
    import httpx2 as httpx

    from tests.gateway.helpers import API_KEY

    gateway = start_gateway("--chat-max-tokens", "200", "--chat-tts-max-new-tokens", "400")
    chats = BatchCounts(triton_server, "voice_chat_stream")
    body = {"model": "step-audio-chat", "modalities": ["text", "audio"], "audio": {"voice": "Tingting", "format": "pcm16"},
            "messages": [{"role": "user", "content": "你好"}], "stream": True, "seed": 1, "max_completion_tokens": 200}
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert next(response.iter_raw())
    assert chats.settle(2, timeout_s=30)[0] == 2
    assert httpx.get(gateway.url + "/health").json()["status"] == "ready"
