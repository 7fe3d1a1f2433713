"""Voice chat serving against the live server on tiny checkpoints: tokenizer, chat_llm, voice_chat(_stream)."""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from stepaudio.testing.voices import synthetic_voice
from tests.server.helpers import BatchCounts, grpc_input, http_input

pytestmark = pytest.mark.server
GREEDY = {"TEMPERATURE": np.array([0.0], np.float32)}
SHORT = {"MAX_NEW_TOKENS": np.array([12], np.int32), "TTS_MAX_NEW_TOKENS": np.array([30], np.int32),
         "SEED": np.array([1], np.int64)}


def _s(text: str) -> np.ndarray:
    return np.array([text.encode()], dtype=np.object_)


def speech(seconds=1.5, rate=16000, channels=1):
    wave = synthetic_voice(seconds, seed=9, sample_rate=rate)
    return np.stack([wave] * channels)


def voice_chat(client, **tensors):
    result = client.infer("voice_chat", [http_input(k, v) for k, v in {**SHORT, **GREEDY, **tensors}.items()])
    return {n: result.as_numpy(n) for n in ("REPLY_TEXT", "USER_TRANSCRIPT", "WAVEFORM", "SAMPLE_RATE")}


def text_of(out, name):
    return out[name].reshape(-1)[0].decode()


def test_tokenizer_model_any_rate_and_channels(http_client):
    for rate, channels in ((8000, 1), (44100, 1), (48000, 2)):
        audio = speech(2.0, rate, channels)
        result = http_client.infer("tokenizer", [http_input("AUDIO", audio[None]),
                                                 http_input("SAMPLE_RATE", np.array([[rate]], np.int32))])
        ids = result.as_numpy("AUDIO_IDS").reshape(-1)
        assert abs(ids.size - 2.2 * 41.67) < 12  # 2 s of voice + 0.4 s of silence padding
        assert np.all((ids >= 65536) & (ids < 70656))
        assert result.as_numpy("AUDIO_STRING").reshape(-1)[0].decode().count("<audio_") == ids.size


def test_audio_in_text_and_audio_out(http_client):
    out = voice_chat(http_client, AUDIO=speech(), SAMPLE_RATE=np.array([16000], np.int32))
    assert text_of(out, "REPLY_TEXT") and text_of(out, "USER_TRANSCRIPT")
    wave = out["WAVEFORM"]
    assert wave.size > 0 and wave.size % 256 == 0 and np.all(np.isfinite(wave))
    assert int(out["SAMPLE_RATE"][0]) == 22050


def test_text_in_and_history_changes_the_reply(http_client):
    plain = voice_chat(http_client, TEXT=_s("你好"))
    assert text_of(plain, "REPLY_TEXT") and text_of(plain, "USER_TRANSCRIPT") == ""
    history = [{"role": "user", "content": "我叫小明"}, {"role": "assistant", "content": text_of(plain, "REPLY_TEXT")}]
    with_history = voice_chat(http_client, TEXT=_s("你好"), HISTORY=_s(json.dumps(history, ensure_ascii=False)))
    assert text_of(with_history, "REPLY_TEXT") != text_of(plain, "REPLY_TEXT")  # greedy: only the prompt differs


def test_top_k_reaches_the_chat_model(http_client):
    """TOP_K 1 samples the most likely id at any temperature, so the reply is the greedy one; the same temperature
    without it samples another reply."""
    text_only = {"TEXT": _s("你好"), "REPLY_AUDIO": np.array([False])}
    hot = {"TEMPERATURE": np.array([1.5], np.float32)}
    greedy = text_of(voice_chat(http_client, **text_only), "REPLY_TEXT")
    assert text_of(voice_chat(http_client, **text_only, **hot, TOP_K=np.array([1], np.int32)), "REPLY_TEXT") == greedy
    assert text_of(voice_chat(http_client, **text_only, **hot), "REPLY_TEXT") != greedy


def test_three_turn_session_keeps_text_history(triton_server, tmp_path):
    import soundfile

    from clients.chat import ChatSession

    question = tmp_path / "question.wav"
    soundfile.write(question, speech(1.2)[0], 16000)
    session = ChatSession(triton_server.grpc_url, None, "be brief", tmp_path / "replies", 8, 30)
    quiet = {"echo": lambda *args, **kwargs: None}
    first = session.turn("你好", **quiet)
    second = session.turn("", question, **quiet)
    third = session.turn("再见", **quiet)
    assert all(r["reply"] for r in (first, second, third))
    assert second["transcript"] and third["wav"] is not None and third["wav"].is_file()
    roles = [turn["role"] for turn in session.history]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert session.history[3]["content"] == second["transcript"]  # the audio turn became its transcript


def test_mixed_text_and_audio_turn(http_client):
    audio = {"AUDIO": speech(), "SAMPLE_RATE": np.array([16000], np.int32)}
    mixed = voice_chat(http_client, TEXT=_s("这是什么声音？"), **audio)
    audio_only = voice_chat(http_client, **audio)
    assert text_of(mixed, "REPLY_TEXT") != text_of(audio_only, "REPLY_TEXT")


def test_concurrent_requests_batch_in_tokenizer(triton_server):
    import tritonclient.http as httpclient

    counts = BatchCounts(triton_server, "tokenizer")
    client = httpclient.InferenceServerClient(triton_server.http_url, concurrency=8)
    try:
        pending = [client.async_infer("tokenizer", [http_input("AUDIO", speech(1.0 + 0.1 * i)[None]),
                                                    http_input("SAMPLE_RATE", np.array([[16000]], np.int32))])
                   for i in range(8)]  # eight different lengths: batched only thanks to ragged inputs
        sizes = [p.get_result().as_numpy("AUDIO_IDS").size for p in pending]
    finally:
        client.close()
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    inferences, executions = counts.settle(8)
    assert inferences == 8 and executions < 8, "8 concurrent requests were not batched"


def test_streaming_chat_text_before_audio_then_final(grpc_client):
    responses: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: responses.put((result, error)))
    kinds = []
    try:
        tensors = {**SHORT, **GREEDY, "AUDIO": speech(), "SAMPLE_RATE": np.array([16000], np.int32)}
        grpc_client.async_stream_infer("voice_chat_stream", [grpc_input(k, v) for k, v in tensors.items()],
                                       enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=120)
            assert error is None, error
            names = {o.name for o in result.get_response().outputs}
            kinds.append("text" if "TEXT_DELTA" in names else "audio" if "WAVEFORM" in names else
                         "transcript" if "USER_TRANSCRIPT" in names else "empty")
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        grpc_client.stop_stream()
    assert kinds[0] == "text" and "audio" in kinds
    assert kinds.index("audio") > 0 and kinds[-1] == "transcript"


@pytest.mark.parametrize("tensors, message", [
    ({}, "TEXT and/or AUDIO"),
    ({"AUDIO": np.zeros((1, 0), np.float32), "SAMPLE_RATE": np.array([16000], np.int32)}, "empty"),
    ({"AUDIO": np.full((1, 1600), np.nan, np.float32), "SAMPLE_RATE": np.array([16000], np.int32)}, "NaN"),
    ({"AUDIO": np.zeros((1, 8000 * 61), np.float32), "SAMPLE_RATE": np.array([8000], np.int32)}, "limit is 60"),
    ({"TEXT": _s("hi"), "HISTORY": _s(json.dumps([{"role": "user", "content": "字" * 3000}]))}, "context limit"),
    ({"TEXT": _s("hi"), "HISTORY": _s(json.dumps([{"role": "robot", "content": "x"}]))}, "unknown chat role"),
    ({"TEXT": _s("hi"), "HISTORY": _s("not json")}, "not valid JSON"),
])
def test_bad_chat_input_is_invalid_arg(http_client, tensors, message):
    with pytest.raises(InferenceServerException) as info:
        voice_chat(http_client, **tensors)
    assert message in str(info.value)
    assert http_client.is_server_ready()
