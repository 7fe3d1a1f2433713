"""``POST /v1/chat/completions`` in OpenAI's audio-chat shape, backed by ``voice_chat_stream``.

The served chat keeps history as text, so only the last user message may carry audio (``input_audio``); earlier
turns are sent as text (the gateway returns each spoken turn's transcript as ``step_audio.user_transcript`` so a
client can do that). The reply speaks in a preset speaker or an uploaded voice (``audio.voice`` = its id; the
gateway sends the stored samples, as for speech); ``modalities: ["text"]`` asks the server for no speech at all.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gateway import triton
from gateway.errors import APIError
from gateway.speech import VoiceRef, voice_tensors
from gateway.voices import Voice

# OpenAI's audio.format names → the gateway's response formats.
CHAT_AUDIO_FORMATS = {"wav": "wav", "pcm16": "pcm", "pcm": "pcm", "flac": "flac", "mp3": "mp3", "opus": "opus", "aac": "aac"}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many optional fields that do not apply here


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class InputAudio(_Lenient):
    data: str  # base64 of an audio file
    format: str | None = None  # the file says what it is; OpenAI clients send "wav" or "mp3"


class InputAudioPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | InputAudioPart, Field(discriminator="type")]


class AssistantAudio(_Lenient):
    """An earlier reply's audio as OpenAI clients send it back ({id}); its transcript stands for it here."""

    id: str | None = None
    transcript: str | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    audio: AssistantAudio | None = None


class AudioOptions(_Lenient):
    voice: str | VoiceRef | None = None  # None: the served model's default speaker (its config says which)
    format: str = "wav"


class ChatRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] = ["text"]
    audio: AudioOptions | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @property
    def wants_audio(self) -> bool:
        return "audio" in self.modalities

    @property
    def audio_format(self) -> str:
        name = (self.audio or AudioOptions()).format
        if name not in CHAT_AUDIO_FORMATS:
            raise APIError(400, f"audio.format must be one of {', '.join(CHAT_AUDIO_FORMATS)}", param="audio.format")
        return CHAT_AUDIO_FORMATS[name]

    @property
    def voice(self) -> str | None:
        """The reply voice's name or uploaded id; None leaves the choice to the served model."""
        voice = (self.audio or AudioOptions()).voice
        return voice.id if isinstance(voice, VoiceRef) else voice


def _text_of(content: str | list | None, index: int, allow_audio: bool) -> tuple[str, bytes | None]:
    """(text, audio file bytes or None) of one message's content."""
    if content is None or isinstance(content, str):
        return content or "", None
    texts, audio = [], None
    for number, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
            continue
        param = f"messages[{index}].content[{number}].input_audio"
        if not allow_audio:
            raise APIError(400, "only the last user message may carry audio: send earlier turns as text (their "
                           "transcript, returned as step_audio.user_transcript)", param=param)
        if audio is not None:
            raise APIError(400, "one input_audio part per message", param=param)
        try:
            audio = base64.b64decode(part.input_audio.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise APIError(400, "input_audio.data is not valid base64", param=param + ".data") from exc
    return "".join(texts), audio


def split_messages(messages: list[Message]) -> tuple[list[dict], str, bytes | None]:
    """(text history, last user text, last user audio file bytes or None)."""
    history = []
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        if last and message.role != "user":
            raise APIError(400, "the last message must come from the user", param=f"messages[{index}].role")
        text, audio = _text_of(message.content, index, allow_audio=last)
        if message.role == "assistant" and not text and message.audio is not None:
            text = message.audio.transcript or ""
        if last:
            if not text and audio is None:
                raise APIError(400, "the last user message has neither text nor audio", param=f"messages[{index}].content")
            return history, text, audio
        history.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    raise AssertionError("unreachable: messages is not empty")


def chat_tensors(request: ChatRequest, history: list[dict], text: str, audio: tuple[np.ndarray, int] | None,
                 max_tokens: int, tts_max_new_tokens: int, voice: Voice | None = None,
                 speaker: str | None = None) -> dict[str, np.ndarray]:
    """``voice_chat_stream`` inputs; ``voice`` is the uploaded voice ``request.voice`` names (None: the preset
    ``speaker``, default ``request.voice`` with an alias already resolved by the caller)."""
    tensors = {"HISTORY": triton.string(json.dumps(history, ensure_ascii=False)),
               "MAX_NEW_TOKENS": triton.scalar(max_tokens, np.int32),
               "REPLY_AUDIO": np.array([request.wants_audio], dtype=np.bool_)}
    if request.wants_audio:
        tensors |= {**voice_tensors(speaker or request.voice, voice), "TTS_MAX_NEW_TOKENS": triton.scalar(tts_max_new_tokens, np.int32)}
    if text:
        tensors["TEXT"] = triton.string(text)
    if audio is not None:
        tensors["AUDIO"], tensors["SAMPLE_RATE"] = audio[0], triton.scalar(audio[1], np.int32)
    return {**tensors, **triton.sampling(request.seed, request.temperature, request.top_p)}
