"""Client-driven turns of a real-time session (no Triton import): the session's control messages, turn detection
settings, the input the next reply answers, and what of a reply the client played.

A session's turns come from the VAD (``RealtimeController``) or from the client: manual turns (turn detection off:
the client commits the audio it sent), typed turns (user text) and replies it asks for (``response.create``), a
cancel (``response.cancel``) and a truncation (``conversation.item.truncate``: it played only the first
``audio_end_ms`` of a reply, so the history keeps only that part). The served session receives these as one JSON
control message per request (``CONTROL``); each parses into one dataclass here, validated before any work starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from stepaudio.realtime.controller import RealtimeConfig

MAX_CONTROL_BYTES = 64_000
MAX_TEXT_CHARS = 4000  # one typed turn
MAX_INSTRUCTIONS_CHARS = 8000
MAX_PENDING_TEXTS = 16


def _number(payload: dict, name: str, low: float, high: float, default: float | None) -> float | None:
    value = payload.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"turn_detection.{name} must be a number {low:g}..{high:g}")
    return float(value)


def _flag(payload: dict, name: str, default: bool) -> bool:
    value = payload.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"turn_detection.{name} must be true or false")
    return value


def _text(payload: dict, name: str, cap: int, required: bool = False) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > cap:
        raise ValueError(f"{name} must be {'a non-empty' if required else 'a'} string of at most {cap} characters")
    return value


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD settings (OpenAI's ``turn_detection: {type: server_vad, ...}``); ``None`` in a session = manual."""

    threshold: float | None = None  # speech probability; the served default when None
    prefix_padding_ms: float | None = None  # audio kept before the detected speech
    silence_duration_ms: float | None = None  # silence that ends the turn
    create_response: bool = True
    interrupt_response: bool = True

    @classmethod
    def parse(cls, payload) -> TurnDetection | None:
        if payload is None:
            return None
        if not isinstance(payload, dict) or payload.get("type", "server_vad") != "server_vad":
            raise ValueError("turn_detection must be null or {\"type\": \"server_vad\", ...}")
        return cls(_number(payload, "threshold", 0.05, 0.99, None),
                   _number(payload, "prefix_padding_ms", 0, 1000, None),
                   _number(payload, "silence_duration_ms", 100, 10_000, None),
                   _flag(payload, "create_response", True), _flag(payload, "interrupt_response", True))

    def controller_config(self, base: RealtimeConfig) -> RealtimeConfig:
        changes: dict = {"create_response": self.create_response, "interrupt_response": self.interrupt_response}
        if self.threshold is not None:
            # Silero's own iterator confirms silence at threshold − 0.15; the confident level never sits below it.
            changes |= {"speech_threshold": self.threshold, "silence_threshold": max(0.01, self.threshold - 0.15),
                        "confident_threshold": max(base.confident_threshold, self.threshold)}
        if self.silence_duration_ms is not None:
            changes |= {"end_of_turn_ms": self.silence_duration_ms,
                        "pause_ms": min(base.pause_ms, self.silence_duration_ms)}
        return replace(base, **changes).validate()


# ---- control messages (one per request) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class UpdateSession:
    """Any field left out keeps its value; ``manual`` turns the VAD off (OpenAI's ``turn_detection: null``)."""

    turn_detection: TurnDetection | None = None
    manual: bool | None = None
    instructions: str | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class CommitAudio:
    """Manual turns: the audio sent since the last commit (or clear) becomes the user's next input."""


@dataclass(frozen=True)
class ClearAudio:
    """Manual turns: drop the audio sent since the last commit."""


@dataclass(frozen=True)
class UserText:
    text: str


@dataclass(frozen=True)
class CreateResponse:
    instructions: str | None = None  # this response only
    audio: bool = True  # False: text only (no TTS)


@dataclass(frozen=True)
class CancelResponse:
    pass


@dataclass(frozen=True)
class TruncateReply:
    response_id: str
    audio_end_ms: float


Control = UpdateSession | CommitAudio | ClearAudio | UserText | CreateResponse | CancelResponse | TruncateReply


def parse_control(message: str) -> Control:
    """One ``CONTROL`` message (JSON). Raises ValueError with a message for the client."""
    if len(message) > MAX_CONTROL_BYTES:
        raise ValueError(f"a control message is limited to {MAX_CONTROL_BYTES} bytes")
    try:
        payload = json.loads(message)
    except json.JSONDecodeError as exc:
        raise ValueError(f"CONTROL is not valid JSON: {exc.msg}") from exc
    if not isinstance(payload, dict):
        raise ValueError("CONTROL must be a JSON object with a 'type'")
    kind = payload.get("type")
    if kind == "session":
        manual = None
        detection = None
        if "turn_detection" in payload:
            detection = TurnDetection.parse(payload["turn_detection"])
            manual = detection is None
        speaker = _text(payload, "speaker", 100)
        if speaker is not None and not speaker.strip():
            raise ValueError("speaker must not be empty")
        return UpdateSession(detection, manual, _text(payload, "instructions", MAX_INSTRUCTIONS_CHARS), speaker)
    if kind == "commit":
        return CommitAudio()
    if kind == "clear":
        return ClearAudio()
    if kind == "text":
        return UserText(_text(payload, "text", MAX_TEXT_CHARS, required=True))
    if kind == "response.create":
        audio = payload.get("audio", True)
        if not isinstance(audio, bool):
            raise ValueError("audio must be true or false")
        return CreateResponse(_text(payload, "instructions", MAX_INSTRUCTIONS_CHARS), audio)
    if kind == "response.cancel":
        return CancelResponse()
    if kind == "truncate":
        response_id = _text(payload, "response_id", 100, required=True)
        end = payload.get("audio_end_ms")
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not 0 <= end <= 3_600_000:
            raise ValueError("audio_end_ms must be a number of milliseconds ≥ 0")
        return TruncateReply(response_id, float(end))
    raise ValueError(f"unknown control type {kind!r}")


# ---- the input the next reply answers ----------------------------------------------------------------------------
@dataclass
class PendingInput:
    """Committed audio (one span: from the first commit's start to the last one's end) and typed text, in arrival
    order, until a reply takes them. ``buffer_start_s`` is where the uncommitted audio begins (manual turns)."""

    buffer_start_s: float = 0.0
    audio_span: tuple[float, float] | None = None
    texts: list[str] = field(default_factory=list)

    def commit(self, now_s: float) -> tuple[float, float]:
        if now_s - self.buffer_start_s < 0.1:  # OpenAI's floor: 100 ms of audio
            raise ValueError("the input audio buffer holds less than 100 ms of audio")
        span = (self.buffer_start_s, now_s)
        self.add_audio(span)
        self.buffer_start_s = now_s
        return span

    def add_audio(self, span: tuple[float, float]) -> None:
        self.audio_span = span if self.audio_span is None else (self.audio_span[0], span[1])

    def add_text(self, text: str) -> None:
        if len(self.texts) >= MAX_PENDING_TEXTS:
            raise ValueError(f"at most {MAX_PENDING_TEXTS} typed items may wait for a response")
        self.texts.append(text)

    def empty(self) -> bool:
        return self.audio_span is None and not self.texts

    def take(self) -> tuple[tuple[float, float] | None, str]:
        taken = self.audio_span, "\n".join(self.texts)
        self.audio_span, self.texts = None, []
        return taken


# ---- what of a reply the client played ---------------------------------------------------------------------------
def heard_text(sentences: list[tuple[str, float]], audio_end_s: float) -> str:
    """The text of the first ``audio_end_s`` of a reply whose sentences lasted (text, seconds) each: the sentences
    played whole, then the share of the next one's characters in proportion to its audio played (characters, not
    words: Chinese has no spaces)."""
    heard, t = [], 0.0
    for text, seconds in sentences:
        if t + seconds <= audio_end_s + 1e-6:
            heard.append(text)
            t += seconds
            continue
        share = max(0.0, audio_end_s - t) / seconds if seconds > 0 else 0.0
        if share > 0:
            heard.append(text[:int(len(text) * share)])
        break
    return " ".join(part.strip() for part in heard if part.strip())
