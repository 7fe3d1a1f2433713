"""Inline style tags at the start of a TTS text, e.g. ``(高兴1)(四川话)(慢速1)text`` or ``（RAP）lyrics``.

The reference only looks at the first tag (for routing to the music decoder); the LLM reads all of them. We parse
every leading tag so that an unknown one is an error instead of text the model reads as an instruction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).parent / "data" / "step_audio_tts.json"
MUSIC_RAP = "RAP"
MUSIC_HUMMING = "哼唱"

# One tag: ASCII or full-width parentheses around anything that is not a parenthesis.
_LEADING_TAG = re.compile(r"^\s*[（(]([^()（）]*)[）)]")


@lru_cache(maxsize=1)
def contract_data() -> dict:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def known_tags() -> dict[str, list[str]]:
    return contract_data()["tags"]


@dataclass(frozen=True)
class StyledText:
    tags: tuple[str, ...]
    body: str  # text after the tags

    @property
    def music(self) -> str | None:
        """"RAP" or "哼唱" when the first tag asks for the music decoder, else None."""
        return self.tags[0] if self.tags and self.tags[0] in (MUSIC_RAP, MUSIC_HUMMING) else None


def parse_style_tags(text: str) -> StyledText:
    all_tags = {tag for group in known_tags().values() for tag in group}
    tags = []
    rest = text
    while (match := _LEADING_TAG.match(rest)) is not None:
        name = match.group(1).strip()
        if name not in all_tags:
            raise ValueError(f"unknown style tag ({name}); known tags: {', '.join(sorted(all_tags))}")
        tags.append(name)
        rest = rest[match.end() :]
    if not rest.strip():
        raise ValueError("text has no words to speak after its style tags")
    return StyledText(tuple(tags), rest)
