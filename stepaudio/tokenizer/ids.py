"""Dual-codebook id space (docs/checkpoints.md#token-ids).

vq02 code c (0…1023) is LLM id ``65536 + c``; vq06 code c (0…4095) is LLM id ``66560 + c``. Audio is interleaved in
groups of 2 vq02 + 3 vq06 codes (120 ms each); codes that do not fill a whole group are dropped. The Chat model reads
the same ids as text: each id becomes ``<audio_N>`` with ``N = id − 65536``, concatenated without separators.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

AUDIO_ID_OFFSET = 65536
VQ02_CODES = 1024
VQ06_CODES = 4096
VQ06_ID_OFFSET = AUDIO_ID_OFFSET + VQ02_CODES
AUDIO_ID_END = VQ06_ID_OFFSET + VQ06_CODES  # exclusive
GROUP_VQ02 = 2
GROUP_VQ06 = 3

_AUDIO_TOKEN = re.compile(r"<audio_(0|[1-9][0-9]{0,3})>")


def interleave(vq02: Sequence[int], vq06: Sequence[int]) -> list[int]:
    """LLM ids for whole groups of [2 vq02, 3 vq06]."""
    groups = min(len(vq02) // GROUP_VQ02, len(vq06) // GROUP_VQ06)
    ids: list[int] = []
    for g in range(groups):
        ids += [AUDIO_ID_OFFSET + int(c) for c in vq02[g * GROUP_VQ02 : (g + 1) * GROUP_VQ02]]
        ids += [VQ06_ID_OFFSET + int(c) for c in vq06[g * GROUP_VQ06 : (g + 1) * GROUP_VQ06]]
    return ids


def ids_to_audio_string(ids: Iterable[int]) -> str:
    parts = []
    for i in ids:
        if not AUDIO_ID_OFFSET <= int(i) < AUDIO_ID_END:
            raise ValueError(f"{i} is not an audio id (expected {AUDIO_ID_OFFSET}..{AUDIO_ID_END - 1})")
        parts.append(f"<audio_{int(i) - AUDIO_ID_OFFSET}>")
    return "".join(parts)


def audio_string_to_ids(text: str) -> list[int]:
    """Inverse of ``ids_to_audio_string``; anything but back-to-back ``<audio_N>`` tokens is a ``ValueError``."""
    ids, position = [], 0
    while position < len(text):
        match = _AUDIO_TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"expected '<audio_N>' at character {position} of the audio string: {text[position:position + 16]!r}")
        code = int(match.group(1))
        if code >= AUDIO_ID_END - AUDIO_ID_OFFSET:
            raise ValueError(f"<audio_{code}> is out of range (N must be below {AUDIO_ID_END - AUDIO_ID_OFFSET})")
        ids.append(AUDIO_ID_OFFSET + code)
        position = match.end()
    return ids
