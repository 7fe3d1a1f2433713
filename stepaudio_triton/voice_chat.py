"""What ``voice_chat`` (one response), ``voice_chat_stream`` and ``chat_reply`` share: the models they call (from
config) and their requests → a ``chat_turn.TurnRequest`` (the turn itself is ``chat_turn.ChatTurn``).

The reply speaks in a preset SPEAKER or a cloned voice (PROMPT_AUDIO + PROMPT_SAMPLE_RATE + PROMPT_TEXT);
REPLY_AUDIO false skips TTS.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from stepaudio.chat.template import turns_from_json
from stepaudio_contract import specs
from stepaudio_triton import bls
from stepaudio_triton.adapter import (
    given_inputs,
    optional_input,
    optional_scalar,
    optional_string,
    parameter,
    rendered_parameter,
)
from stepaudio_triton.chat_turn import ChatTurn, ReplyVoice, TurnModels, TurnRequest

PROMPT_VOICE = specs.names(specs.PROMPT_VOICE)  # a cloned reply voice, as tts_stream takes it


@dataclass
class ChatGraph:
    models: TurnModels
    default_speaker: str | None = None  # the reply voice: set by speaking_from_config
    max_sentence_chars: int | None = None

    @classmethod
    def from_config(cls, config: dict) -> ChatGraph:
        """The models a turn calls; no reply voice (chat_reply's reply is spoken by the ensemble's tts step)."""
        return cls(TurnModels(
            tokenizer=parameter(config, "tokenizer_model", "tokenizer"),
            chat=parameter(config, "chat_model", "chat_llm"),
            speech=parameter(config, "tts_model", "ensemble_tts"),
            speech_stream=parameter(config, "stream_tts_model", "tts_stream"),
        ))

    @classmethod
    def speaking_from_config(cls, config: dict) -> ChatGraph:
        """The models and the reply voice's parameters (voice_chat, voice_chat_stream)."""
        return dataclasses.replace(cls.from_config(config), default_speaker=rendered_parameter(config, "default_speaker"),
                                   max_sentence_chars=rendered_parameter(config, "max_sentence_chars", int))

    def turn(self, request: TurnRequest, asr_pool: Executor) -> ChatTurn:
        """A turn over BLS (call ``start()``)."""
        return ChatTurn(bls.transport, self.models, request, asr_pool)


def turn_request(request, graph: ChatGraph) -> TurnRequest:
    """voice_chat / voice_chat_stream inputs → the turn: TEXT + HISTORY, AUDIO + SAMPLE_RATE, the chat's sampling
    (its SEED seeds the reply's speech too), and the reply voice: SPEAKER or PROMPT_*, else the served default;
    none when REPLY_AUDIO is false."""
    audio = optional_input(request, "AUDIO")
    messages = turn_messages(request, "AUDIO" if audio is not None else None)
    sampling = chat_sampling(request)
    prompt = given_inputs(request, PROMPT_VOICE)
    voice = ReplyVoice(speaker=optional_string(request, "SPEAKER") or (None if prompt else graph.default_speaker),
                       prompt=prompt, prompt_names=tuple(PROMPT_VOICE),
                       seed=int(sampling["SEED"][0]) if "SEED" in sampling else None,
                       max_new_tokens=optional_scalar(request, "TTS_MAX_NEW_TOKENS", int)).validate()
    reply_audio = optional_scalar(request, "REPLY_AUDIO", bool)
    return TurnRequest(messages, audio=audio, sample_rate=optional_scalar(request, "SAMPLE_RATE", int),
                       sampling=sampling, voice=voice if reply_audio is None or reply_audio else None)


def turn_messages(request, audio_input: str | None) -> list[dict]:
    """Text turns for chat_llm: HISTORY + this turn's TEXT; ``audio_input`` names the turn's audio, if any."""
    history = turns_from_json(optional_string(request, "HISTORY") or "")  # validates roles and JSON early
    text = optional_string(request, "TEXT") or ""
    if not text.strip() and audio_input is None:
        raise ValueError("send TEXT and/or AUDIO for this turn")
    turns = [{"role": t.role, "content": t.text} for t in history]
    if text.strip():
        turns.append({"role": "user", "content": text})
    return turns


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
    turn = graph.turn(TurnRequest(messages, audio_ids=audio_ids, sampling=chat_sampling(request)), pool).start()
    reply = "".join(turn.deltas())
    return reply, turn.transcript()
