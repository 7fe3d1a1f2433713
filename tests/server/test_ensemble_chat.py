"""ensemble_chat against the live server on tiny checkpoints: one spoken turn scheduled by Triton step by step
(tokenizer → chat_reply → tts → flow_decoder → vocoder), the reply equal to the BLS voice_chat's."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.server.helpers import BatchCounts, http_input
from tests.server.test_chat import GREEDY, SHORT, speech, text_of, voice_chat

pytestmark = pytest.mark.server
STEPS = ("tokenizer", "chat_reply", "tts", "flow_decoder", "vocoder")


def _batched(tensors: dict) -> dict:
    return {name: value[None] for name, value in tensors.items()}  # ensemble_chat takes a batch dimension of 1


def ensemble_chat(client, **tensors):
    inputs = _batched({**SHORT, **GREEDY, "SPEAKER": np.array(["Tingting".encode()], dtype=np.object_), **tensors})
    result = client.infer("ensemble_chat", [http_input(k, v) for k, v in inputs.items()])
    return {n: result.as_numpy(n) for n in ("REPLY_TEXT", "USER_TRANSCRIPT", "WAVEFORM", "SAMPLE_RATE")}


def test_audio_turn_runs_every_step_and_replies_like_voice_chat(http_client, triton_server):
    audio, rate = speech(), np.array([16000], np.int32)
    counts = {model: BatchCounts(triton_server, model) for model in (*STEPS, "chat_llm", "ensemble_chat")}
    out = ensemble_chat(http_client, AUDIO=audio, AUDIO_SAMPLE_RATE=rate)
    reply, transcript = text_of(out, "REPLY_TEXT"), text_of(out, "USER_TRANSCRIPT")
    assert reply and transcript
    wave = out["WAVEFORM"].reshape(-1)
    assert wave.size > 0 and wave.size % 256 == 0 and np.all(np.isfinite(wave))
    assert int(out["SAMPLE_RATE"].reshape(-1)[0]) == 22050
    for model in (*STEPS, "ensemble_chat"):
        assert counts[model].settle(1)[0] == 1, model  # Triton ran each step once for this turn
    assert counts["chat_llm"].settle(2)[0] == 2  # the reply and the ASR transcript
    bls = voice_chat(http_client, AUDIO=audio, SAMPLE_RATE=rate)  # greedy: the same prompt gives the same text
    assert (text_of(bls, "REPLY_TEXT"), text_of(bls, "USER_TRANSCRIPT")) == (reply, transcript)


def test_a_turn_without_a_reply_voice_is_refused(http_client):
    with pytest.raises(InferenceServerException, match="preset speaker or prompt audio"):
        inputs = _batched({**SHORT, **GREEDY, "AUDIO": speech(), "AUDIO_SAMPLE_RATE": np.array([16000], np.int32)})
        http_client.infer("ensemble_chat", [http_input(k, v) for k, v in inputs.items()])
