"""``POST /v1/audio/speech``: OpenAI's request → ``tts_stream`` tensors, and its audio chunks → response bytes.

Step-Audio specifics: ``instructions`` holds style tags (names from Step-Audio-TTS-3B's tag list, e.g.
``"高兴1, 四川话"`` or ``"(RAP)"``); ``speed`` picks one of the model's speed tags (it has two steps each way,
there is no time stretching); ``seed`` and ``max_new_tokens`` go to the LLM sampler.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gateway import triton
from gateway.audio import RESPONSE_FORMATS
from gateway.errors import APIError
from gateway.voices import Voice
from stepaudio.tts.tags import MUSIC_HUMMING, MUSIC_RAP, known_tags, parse_style_tags

_TAG_NAME = re.compile(r"[^\s,，、;；()（）]+")
# speed (OpenAI range 0.25–4) → the model's tag; 0.9–1.1 speaks at the natural rate.
_SPEED_STEPS = ((0.75, "慢速2"), (0.9, "慢速1"), (1.1, None), (1.5, "快速1"), (float("inf"), "快速2"))


class VoiceRef(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str
    voice: str | VoiceRef
    instructions: str | None = None
    response_format: Literal[RESPONSE_FORMATS] = "mp3"  # type: ignore[valid-type]
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1)

    @property
    def voice_id(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id


def speed_tag(speed: float) -> str | None:
    return next(tag for limit, tag in _SPEED_STEPS if speed < limit)


def styled_text(text: str, instructions: str | None, speed: float) -> str:
    """The text with its style tags in front: the text's own leading tags, those named in ``instructions`` and the
    speed tag, music tag first (the served graph routes on the first tag), each once."""
    try:
        own = parse_style_tags(text)
    except ValueError as exc:
        raise APIError(400, str(exc), param="input") from exc
    known = {tag for group in known_tags().values() for tag in group}
    asked = _TAG_NAME.findall(instructions or "")
    unknown = [t for t in asked if t not in known]
    if unknown:
        raise APIError(400, f"instructions name unknown style tags {unknown}; Step-Audio knows: {', '.join(sorted(known))}",
                       param="instructions")
    tags = list(dict.fromkeys([*own.tags, *asked]))
    music = [t for t in tags if t in (MUSIC_RAP, MUSIC_HUMMING)]
    if len(music) > 1:
        raise APIError(400, "choose one of (RAP) and (哼唱)", param="instructions")
    tag = speed_tag(speed)
    if tag is not None:
        if music:
            raise APIError(400, f"speed does not apply to ({music[0]}): the music decoder has no speed tags; send speed 1.0",
                           param="speed")
        if any(t in known_tags()["speed"] for t in tags):
            raise APIError(400, "give the speed either as a style tag or as speed, not both", param="speed")
        tags.append(tag)
    tags = music + [t for t in tags if t not in music]
    return "".join(f"({t})" for t in tags) + own.body


def voice_tensors(voice_id: str | None, voice: Voice | None) -> dict[str, np.ndarray]:
    """The reply voice as ``tts_stream`` and ``voice_chat_stream`` take it: a preset ``SPEAKER`` (``voice`` None),
    an uploaded voice's exact samples + transcript (``PROMPT_*``), or nothing: the served model's default speaker."""
    if voice is None:
        return {} if voice_id is None else {"SPEAKER": triton.string(voice_id)}
    return {"PROMPT_AUDIO": voice.samples, "PROMPT_SAMPLE_RATE": triton.scalar(voice.sample_rate, np.int32),
            "PROMPT_TEXT": triton.string(voice.transcript)}


def tts_tensors(request: SpeechRequest, text: str, voice: Voice | None, max_new_tokens: int,
                speaker: str | None = None) -> dict[str, np.ndarray]:
    """Unbatched ``tts_stream`` inputs; ``voice`` None means ``speaker`` (default ``request.voice``, an alias already
    resolved by the caller) is a preset speaker of the server."""
    tensors = {"TEXT": triton.string(text), "MAX_NEW_TOKENS": triton.scalar(max_new_tokens, np.int32),
               **voice_tensors(speaker or request.voice_id, voice)}
    return {**tensors, **triton.sampling(request.seed, request.temperature, request.top_p)}
