"""Chat requests for Step-Audio-Chat: turns → prompt ids within the context limit, and streamed text deltas.

    ids = chat_prompt_ids(tokenizer, turns, max_context_tokens)
    deltas = TextDeltas(tokenizer)
    for token_id in stream: print(deltas.feed(token_id), end="")
"""

from __future__ import annotations

from typing import Protocol, Sequence

from stepaudio.chat.template import ChatTurn, render_chat


class ChatTokenizer(Protocol):
    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids) -> str: ...


def chat_prompt_ids(tokenizer: ChatTokenizer, turns: Sequence[ChatTurn], max_context_tokens: int) -> list[int]:
    """The reference encodes the rendered string with the Chat tokenizer's ``add_bos_token: true``."""
    ids = tokenizer.encode(render_chat(turns), add_bos=True)
    if len(ids) > max_context_tokens:
        raise ValueError(
            f"the conversation is {len(ids)} tokens; this server's context limit is {max_context_tokens}: "
            "drop or shorten older turns"
        )
    return ids


class TextDeltas:
    """Incremental detokenisation: the text that ids add, held back while a UTF-8 character is still incomplete."""

    def __init__(self, tokenizer: ChatTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def feed(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character split over byte-fallback pieces
            return ""
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else text
        self.emitted = text
        return delta

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)
