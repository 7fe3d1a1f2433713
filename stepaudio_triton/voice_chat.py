"""The speech-in/speech-out chat graph shared by ``voice_chat`` (one response) and ``voice_chat_stream``.

tokenizer (user audio → ids) → chat_llm (reply text, streamed) and, for an audio turn, chat_llm in ASR mode (the
transcript that replaces the audio in the client's text history) → TTS of each completed reply sentence, in a
preset SPEAKER or a cloned voice (PROMPT_AUDIO + PROMPT_SAMPLE_RATE + PROMPT_TEXT); REPLY_AUDIO false skips TTS.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from stepaudio.chat.template import turns_from_json
from stepaudio_contract import specs
from stepaudio_contract.client import string
from stepaudio_triton import bls
from stepaudio_triton.adapter import (
    given_inputs,
    optional_input,
    optional_scalar,
    optional_string,
    parameter,
    rendered_parameter,
)

PROMPT_VOICE = specs.names(specs.PROMPT_VOICE)  # a cloned reply voice, as tts_stream takes it


@dataclass
class ChatGraph:
    tokenizer_model: str
    chat_model: str
    tts_model: str
    stream_tts_model: str
    default_speaker: str | None = None  # the reply voice: set by speaking_from_config
    max_sentence_chars: int | None = None

    @classmethod
    def from_config(cls, config: dict) -> ChatGraph:
        """The models a turn calls; no reply voice (chat_reply's reply is spoken by the ensemble's tts step)."""
        return cls(
            parameter(config, "tokenizer_model", "tokenizer"),
            parameter(config, "chat_model", "chat_llm"),
            parameter(config, "tts_model", "ensemble_tts"),
            parameter(config, "stream_tts_model", "tts_stream"),
        )

    @classmethod
    def speaking_from_config(cls, config: dict) -> ChatGraph:
        """The models and the reply voice's parameters (voice_chat, voice_chat_stream)."""
        return dataclasses.replace(cls.from_config(config), default_speaker=rendered_parameter(config, "default_speaker"),
                                   max_sentence_chars=rendered_parameter(config, "max_sentence_chars", int))


@dataclass
class ChatTurnInputs:
    messages: str  # JSON text turns: history + this turn's text
    audio: np.ndarray | None
    sample_rate: np.ndarray | None
    speaker: str | None  # None: the reply speaks in prompt_voice
    prompt_voice: dict  # PROMPT_* tensors, all three or none
    sampling: dict
    tts_max_new_tokens: np.ndarray | None
    reply_audio: bool  # False: text reply only, no TTS request at all

    @classmethod
    def from_request(cls, request, graph: ChatGraph) -> ChatTurnInputs:
        audio = optional_input(request, "AUDIO")
        messages = turn_messages(request, "AUDIO" if audio is not None else None)
        sampling = chat_sampling(request)
        speaker = optional_string(request, "SPEAKER")
        prompt_voice = given_inputs(request, PROMPT_VOICE)
        # Checked before the chat runs, so a bad voice costs no generation (tts_frontend checks the audio itself).
        if prompt_voice and len(prompt_voice) < len(PROMPT_VOICE):
            raise ValueError(f"a prompt voice needs all of {', '.join(PROMPT_VOICE)}")
        if prompt_voice and speaker:
            raise ValueError("give either SPEAKER or a prompt voice (PROMPT_AUDIO ...), not both")
        reply_audio = optional_scalar(request, "REPLY_AUDIO", bool)
        return cls(
            messages,
            audio,
            optional_input(request, "SAMPLE_RATE"),
            None if prompt_voice else speaker or graph.default_speaker,
            prompt_voice,
            sampling,
            optional_input(request, "TTS_MAX_NEW_TOKENS"),
            True if reply_audio is None else reply_audio,
        )


def turn_messages(request, audio_input: str | None) -> str:
    """JSON text turns for chat_llm: HISTORY + this turn's TEXT; ``audio_input`` names the turn's audio, if any."""
    history = turns_from_json(optional_string(request, "HISTORY") or "")  # validates roles and JSON early
    text = optional_string(request, "TEXT") or ""
    if not text.strip() and audio_input is None:
        raise ValueError("send TEXT and/or AUDIO for this turn")
    turns = [{"role": t.role, "content": t.text} for t in history]
    if text.strip():
        turns.append({"role": "user", "content": text})
    return json.dumps(turns, ensure_ascii=False)


def chat_sampling(request) -> dict:
    """The chat sampling inputs given, shaped [1] for chat_llm (a batched caller sends [1, 1])."""
    return {name: value.reshape(1) for name, value in given_inputs(request, specs.names(specs.SAMPLING)).items()}


def collected_reply(graph: ChatGraph, request, pool: ThreadPoolExecutor) -> tuple[str, str]:
    """chat_reply (a step of ensemble_chat): this turn's text turns + AUDIO_IDS (from the tokenizer step) → the
    whole reply text and the user's transcript. The reply is collected because the TTS step needs all of it."""
    audio_ids = optional_input(request, "AUDIO_IDS")
    if audio_ids is not None:
        audio_ids = audio_ids.reshape(-1).astype(np.int32)
    messages = turn_messages(request, "AUDIO_IDS" if audio_ids is not None else None)
    inputs = ChatTurnInputs(messages=messages, audio=None, sample_rate=None, speaker=None, prompt_voice={},
                            sampling=chat_sampling(request), tts_max_new_tokens=None, reply_audio=False)
    run = ChatRun(graph, inputs, pool, audio_ids=audio_ids)
    reply = "".join(run.reply_deltas())
    return reply, run.transcript()


class ChatRun:
    """One turn through the graph; the caller consumes ``reply_deltas()`` and then ``transcript()``."""

    def __init__(self, graph: ChatGraph, inputs: ChatTurnInputs, pool: ThreadPoolExecutor, audio_ids: np.ndarray | None = None):
        self.graph, self.inputs = graph, inputs
        self.audio_ids = audio_ids  # given when the caller tokenized the audio already (ensemble_chat)
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
        chat_inputs = {"MESSAGES": string(inputs.messages), **inputs.sampling}
        if self.audio_ids is not None:
            chat_inputs["AUDIO_IDS"] = self.audio_ids
        self.reply = bls.Stream(graph.chat_model, chat_inputs, ["TEXT_DELTA"], cancellable=True)

    def _transcribe(self) -> str:
        parts = bls.Stream(self.graph.chat_model, {"MODE": string("asr"), "AUDIO_IDS": self.audio_ids}, ["TEXT_DELTA"],
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
        voice = dict(self.inputs.prompt_voice)
        if self.inputs.speaker is not None:
            voice["SPEAKER"] = string(self.inputs.speaker)
        voice["TEXT"] = string(sentence)
        if batched:  # ensemble_tts takes a batch dimension of 1
            voice = {name: value.reshape(1, -1) for name, value in voice.items()}
        shape = (1, 1) if batched else (1,)
        extra = {}
        if (seed := self.inputs.sampling.get("SEED")) is not None:
            extra["SEED"] = seed.reshape(shape).astype(np.int64)
        if self.inputs.tts_max_new_tokens is not None:
            extra["MAX_NEW_TOKENS"] = self.inputs.tts_max_new_tokens.reshape(shape).astype(np.int32)
        return {**voice, **extra}
