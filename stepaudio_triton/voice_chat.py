"""The speech-in/speech-out chat graph shared by ``voice_chat`` (one response) and ``voice_chat_stream``.

tokenizer (user audio → ids) → chat_llm (reply text, streamed) and, for an audio turn, chat_llm in ASR mode (the
transcript that replaces the audio in the client's text history) → TTS of each completed reply sentence.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from stepaudio.chat.template import turns_from_json
from stepaudio_triton import bls
from stepaudio_triton.adapter import optional_input, optional_string, parameter

CHAT_SAMPLING = ("TEMPERATURE", "TOP_P", "SEED", "MAX_NEW_TOKENS")


@dataclass
class ChatGraph:
    tokenizer_model: str
    chat_model: str
    tts_model: str
    stream_tts_model: str
    default_speaker: str
    max_sentence_chars: int

    @classmethod
    def from_config(cls, config: dict) -> ChatGraph:
        return cls(
            parameter(config, "tokenizer_model", "tokenizer"),
            parameter(config, "chat_model", "chat_llm"),
            parameter(config, "tts_model", "ensemble_tts"),
            parameter(config, "stream_tts_model", "tts_stream"),
            parameter(config, "default_speaker", "Tingting"),
            parameter(config, "max_sentence_chars", 200, int),
        )


@dataclass
class ChatTurnInputs:
    messages: str  # JSON text turns: history + this turn's text
    audio: np.ndarray | None
    sample_rate: np.ndarray | None
    speaker: str
    sampling: dict
    tts_max_new_tokens: np.ndarray | None

    @classmethod
    def from_request(cls, request, graph: ChatGraph) -> ChatTurnInputs:
        history = turns_from_json(optional_string(request, "HISTORY") or "")  # validates roles and JSON early
        text = optional_string(request, "TEXT") or ""
        audio = optional_input(request, "AUDIO")
        if not text.strip() and audio is None:
            raise ValueError("send TEXT and/or AUDIO for this turn")
        turns = [{"role": t.role, "content": t.text} for t in history]
        if text.strip():
            turns.append({"role": "user", "content": text})
        sampling = {n: v for n in CHAT_SAMPLING if (v := optional_input(request, n)) is not None}
        return cls(
            json.dumps(turns, ensure_ascii=False),
            audio,
            optional_input(request, "SAMPLE_RATE"),
            optional_string(request, "SPEAKER") or graph.default_speaker,
            sampling,
            optional_input(request, "TTS_MAX_NEW_TOKENS"),
        )


def _string(value: str) -> np.ndarray:
    return np.array([value.encode()], dtype=np.object_)


class ChatRun:
    """One turn through the graph; the caller consumes ``reply_deltas()`` and then ``transcript()``."""

    def __init__(self, graph: ChatGraph, inputs: ChatTurnInputs, pool: ThreadPoolExecutor):
        self.graph, self.inputs = graph, inputs
        self.audio_ids = None
        if inputs.audio is not None:
            if inputs.sample_rate is None:
                raise ValueError("AUDIO needs SAMPLE_RATE")
            tokens = bls.call(
                graph.tokenizer_model,
                {"AUDIO": inputs.audio[None].astype(np.float32), "SAMPLE_RATE": inputs.sample_rate.reshape(1, 1).astype(np.int32)},
                ["AUDIO_IDS"],
            )
            self.audio_ids = tokens["AUDIO_IDS"][0]
        self._transcript: Future | None = pool.submit(self._transcribe) if self.audio_ids is not None else None
        chat_inputs = {"MESSAGES": _string(inputs.messages), **inputs.sampling}
        if self.audio_ids is not None:
            chat_inputs["AUDIO_IDS"] = self.audio_ids
        self.reply = bls.Stream(graph.chat_model, chat_inputs, ["TEXT_DELTA"], cancellable=True)

    def _transcribe(self) -> str:
        parts = bls.Stream(self.graph.chat_model, {"MODE": _string("asr"), "AUDIO_IDS": self.audio_ids}, ["TEXT_DELTA"],
                           cancellable=True)
        return "".join(r["TEXT_DELTA"].reshape(-1)[0].decode() for r in parts)

    def reply_deltas(self):
        for response in self.reply:
            yield response["TEXT_DELTA"].reshape(-1)[0].decode()

    def transcript(self) -> str:
        return self._transcript.result() if self._transcript is not None else ""

    def cancel(self) -> None:
        """Stop the reply stream (best effort, see ``bls.Stream.cancel``)."""
        self.reply.cancel()

    def tts_inputs(self, sentence: str, batched: bool) -> dict:
        text, speaker = _string(sentence), _string(self.inputs.speaker)
        if batched:  # ensemble_tts takes a batch dimension of 1
            text, speaker = text[None], speaker[None]
        shape = (1, 1) if batched else (1,)
        extra = {}
        if (seed := self.inputs.sampling.get("SEED")) is not None:
            extra["SEED"] = seed.reshape(shape).astype(np.int64)
        if self.inputs.tts_max_new_tokens is not None:
            extra["MAX_NEW_TOKENS"] = self.inputs.tts_max_new_tokens.reshape(shape).astype(np.int32)
        return {"TEXT": text, "SPEAKER": speaker, **extra}
