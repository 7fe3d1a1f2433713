"""The Step-Audio-Chat template (reference ``StepAudio.apply_chat_template``) and text-based history.

    <|BOT|>{role}\\n{content}<|EOT|> ... <|BOT|>assistant\\n

Roles: ``system``, ``user`` (written ``human``), ``assistant``. Audio content is the ``<audio_N>`` string of its
dual-codebook ids. Unlike the reference, a turn may carry text *and* audio (text first, then the audio string).

History is text: the client sends prior turns as text; a user's audio turn is replaced by its transcript after the
reply (the reference's context compression, ≈14:1 fewer tokens). The transcript comes from the chat model itself in
ASR mode (``asr_turns``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from stepaudio.tokenizer.ids import ids_to_audio_string

DATA_FILE = Path(__file__).parent / "data" / "step_audio_chat.json"
BOT, EOT = "<|BOT|>", "<|EOT|>"
_SPECIAL_LITERALS = (BOT, EOT, "<s>", "</s>", "<unk>")


@lru_cache(maxsize=1)
def contract_data() -> dict:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ChatTurn:
    role: str
    text: str = ""
    audio_ids: tuple[int, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        roles = contract_data()["role_names"]
        if self.role not in roles:
            raise ValueError(f"unknown chat role {self.role!r}; expected one of {sorted(roles)}")
        if not self.text.strip() and not self.audio_ids:
            raise ValueError(f"a {self.role} turn needs text or audio")
        if self.audio_ids and roles[self.role] != "human":
            raise ValueError(f"only user turns may carry audio, not {self.role}")
        for literal in _SPECIAL_LITERALS:
            if literal in self.text:
                raise ValueError(f"turn text may not contain the control token {literal}")
        if "<audio_" in self.text:
            raise ValueError("turn text may not contain <audio_N> tokens; send audio as audio")

    def content(self) -> str:
        audio = ids_to_audio_string(self.audio_ids) if self.audio_ids else ""
        return self.text + audio


def turns_from_json(payload: str) -> list[ChatTurn]:
    """Client history: a JSON list of {"role": ..., "content": "text"} (text only; audio turns were transcribed)."""
    try:
        items = json.loads(payload) if payload.strip() else []
    except json.JSONDecodeError as exc:
        raise ValueError(f"history is not valid JSON: {exc.msg}") from exc
    if not isinstance(items, list):
        raise ValueError("history must be a JSON list of {role, content} objects")
    turns = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str) or not isinstance(item.get("content"), str):
            raise ValueError(f"history item {index} must be an object with string 'role' and 'content'")
        turns.append(ChatTurn(item["role"], item["content"]))
    return turns


def render_chat(turns: Sequence[ChatTurn]) -> str:
    """The prompt string, ending with the open assistant turn."""
    if not turns:
        raise ValueError("a chat needs at least one turn")
    roles = contract_data()["role_names"]
    for turn in turns:
        turn.validate()
    if any(t.role == "system" for t in turns[1:]):
        raise ValueError("a system turn may only come first")
    if roles[turns[-1].role] != "human":
        raise ValueError("the last turn must be the user's")
    parts = []
    for turn in turns:
        parts.append(f"{BOT}{roles[turn.role]}\n{turn.content()}{EOT}")
    parts.append(f"{BOT}assistant\n")
    return "".join(parts)


def asr_turns(audio_ids: Sequence[int]) -> list[ChatTurn]:
    """The chat model's ASR mode: transcribe one user audio turn (for text-based history)."""
    return [ChatTurn("system", contract_data()["asr_system_prompt"]), ChatTurn("user", audio_ids=tuple(audio_ids))]


def asr_max_new_tokens(n_audio_ids: int) -> int:
    """A transcript's token budget: speech carries ≈41.7 audio ids/s and well under 10 text tokens/s, so a quarter
    of the audio ids (+16) never cuts a real transcript and stops a degenerate one early."""
    return n_audio_ids // 4 + 16
