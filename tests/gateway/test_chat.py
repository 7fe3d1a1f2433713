"""/v1/chat/completions in OpenAI's audio-chat shape through the openai client, backed by voice_chat_stream."""

from __future__ import annotations

import base64
import io

import openai
import pytest
import soundfile

from stepaudio.tts.checkpoint import synthetic_voice

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


def test_text_only_reply(client):
    completion = client.chat.completions.create(model="step-audio-chat", messages=[{"role": "user", "content": "你好"}], seed=1)
    message = completion.choices[0].message
    assert message.content and message.audio is None


@pytest.mark.parametrize("messages, extra, message", [
    ([{"role": "assistant", "content": "hi"}], {}, "last message must come from the user"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]},
      {"role": "user", "content": "再说一遍"}], {}, "only the last user message may carry audio"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}], {}, "not valid base64"),
    ([{"role": "user", "content": "你好"}], {"max_tokens": 9}, "at most 8"),
    ([{"role": "user", "content": "你好"}], {**AUDIO_OUT, "audio": {"voice": "voice_abc", "format": "wav"}}, "preset voices"),
])
def test_bad_chat_requests_are_refused(client, messages, extra, message):
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(model="step-audio-chat", messages=messages, **extra)
