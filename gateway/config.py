"""Gateway settings (CLI flags and environment map onto this one dataclass)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from gateway.voices import VoiceQuota
from stepaudio.tts.limits import MAX_PROMPT_SECONDS, MAX_TEXT_CHARS

VOICE_ALIASES = Path(__file__).with_name("voice_aliases.json")
# Served models behind each public model name. tts_stream routes RAP/humming texts to the music decoder itself.
SPEECH_MODELS = {"step-audio-tts": "tts_stream", "tts-1": "tts_stream", "tts-1-hd": "tts_stream", "gpt-4o-mini-tts": "tts_stream"}
CHAT_MODELS = {"step-audio-chat": "voice_chat_stream", "gpt-4o-audio-preview": "voice_chat_stream"}
# /health is ready only when these answer: the two streaming models and every model they call over BLS.
REQUIRED_MODELS = ("tts_stream", "voice_chat_stream", "tts_frontend", "tts_llm", "flow_decoder", "vocoder",
                   "flow_decoder_music", "vocoder_music", "tokenizer", "chat_llm")


@dataclass
class Settings:
    triton_grpc: str
    host: str = "127.0.0.1"
    port: int = 8080
    db: Path = Path("gateway-voices.sqlite3")
    api_keys: tuple[str, ...] = ()  # "key" or "name:key" (keys of one name share voices and limits)
    auth_failures_per_minute: int = 20  # failed key checks per client address before 429
    allowed_origins: tuple[str, ...] = ()  # besides the gateway's own origin (the Host it was asked by)
    drain_timeout_s: float = 30.0  # on SIGTERM: how long streams already running may take to finish
    rate_per_minute: int = 60  # requests per key per minute on the routes that run models (burst = the same)
    max_concurrent: int = 4  # streams per key at once
    max_body_bytes: int = 16 * 1024 * 1024
    max_input_chars: int = MAX_TEXT_CHARS  # the served TTS front end's own limit
    max_upload_bytes: int = 10 * 1024 * 1024
    max_upload_seconds: float = MAX_PROMPT_SECONDS  # the served front end's voice prompt limit
    min_upload_seconds: float = 0.5
    max_voices: int = VoiceQuota.max_voices  # uploaded voices per principal
    max_voice_bytes: int = VoiceQuota.max_bytes  # their samples' bytes per principal
    max_new_tokens: int = 2048  # TTS ids when a request names none (≈41.7 per second of speech)
    max_new_tokens_limit: int = 4096  # the most a request may ask for
    chat_max_tokens: int = 512  # cap and default for reply text tokens
    chat_tts_max_new_tokens: int = 1024  # speech ids per reply sentence
    # A Triton stream silent this long is given up (503): a stub that died never ends its streams
    # (stepaudio_contract/compat.py, entry stalled_bls_streams).
    stall_timeout_s: float = 120.0
    preset_voices: tuple[str, ...] = ("Tingting",)  # the first is what OpenAI's voice names speak by default
    voice_aliases: Path = VOICE_ALIASES  # OpenAI voice name → preset (JSON; null: the first preset)
    required_models: tuple[str, ...] = REQUIRED_MODELS
    speech_models: dict[str, str] = field(default_factory=lambda: dict(SPEECH_MODELS))
    chat_models: dict[str, str] = field(default_factory=lambda: dict(CHAT_MODELS))

    def validate(self) -> None:
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(f"refusing to serve {self.host} without API keys: give --api-key (auth may be off only on loopback)")
        for name in ("rate_per_minute", "auth_failures_per_minute", "max_concurrent", "max_body_bytes", "max_input_chars", "max_upload_bytes",
                     "max_new_tokens", "max_new_tokens_limit", "chat_max_tokens", "chat_tts_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("max_new_tokens must not exceed max_new_tokens_limit")
        if self.drain_timeout_s < 0:
            raise ValueError("drain_timeout_s must not be negative")
        if not self.preset_voices:
            raise ValueError("give at least one preset voice")
        self.aliases()

    def aliases(self) -> dict[str, str]:
        """The alias table resolved: each OpenAI voice name → the preset it speaks with."""
        try:
            table = json.loads(Path(self.voice_aliases).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the voice alias table {self.voice_aliases}: {exc}") from exc
        if not isinstance(table, dict):
            raise ValueError(f"{self.voice_aliases} must hold a JSON object of alias → preset (or null)")
        resolved = {}
        for alias, preset in table.items():
            if alias.startswith("_"):
                continue  # comments
            preset = self.preset_voices[0] if preset is None else preset
            if not isinstance(preset, str) or preset not in self.preset_voices or alias in self.preset_voices:
                raise ValueError(f"voice alias {alias!r} must name one of the presets {list(self.preset_voices)}")
            resolved[alias] = preset
        return resolved


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
