"""Turning a streamed chat reply into TTS requests: whole sentences, as soon as each one is complete.

The chat model writes plain text; a reply that happens to open with a parenthesised aside would be read by the TTS
front end as a style tag, so ``speakable`` drops leading parenthesised groups that are not known tags.
"""

from __future__ import annotations

import re

from stepaudio.tts.tags import known_tags

_SENTENCE_END = re.compile(r"[。！？!?；;\n]|\.(?=\s|$)")
_LEADING_GROUP = re.compile(r"^\s*[（(]([^()（）]*)[）)]")


def speakable(text: str) -> str:
    tags = {tag for group in known_tags().values() for tag in group}
    kept, rest = "", text
    while (match := _LEADING_GROUP.match(rest)) is not None:
        if match.group(1).strip() in tags:
            kept += match.group(0).strip()
        rest = rest[match.end() :]
    return kept + rest.strip() if rest.strip() else ""


class SentenceSplitter:
    """Feed text deltas; get back the sentences they complete (each at most ``max_chars`` long)."""

    def __init__(self, max_chars: int):
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        self.max_chars = max_chars
        self.buffer = ""

    def feed(self, delta: str) -> list[str]:
        self.buffer += delta
        sentences = []
        while True:
            match = _SENTENCE_END.search(self.buffer)
            if match is None or match.end() > self.max_chars:
                break
            sentences.append(self.buffer[: match.end()])
            self.buffer = self.buffer[match.end() :]
        while len(self.buffer) > self.max_chars:  # no sentence end in sight: cut at the limit
            sentences.append(self.buffer[: self.max_chars])
            self.buffer = self.buffer[self.max_chars :]
        return [s for s in (speakable(s) for s in sentences) if s]

    def flush(self) -> list[str]:
        rest, self.buffer = speakable(self.buffer), ""
        return [rest] if rest else []
