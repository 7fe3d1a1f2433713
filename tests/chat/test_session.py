"""Chat prompt ids, the context limit and incremental detokenisation."""

from __future__ import annotations

import pytest

from stepaudio.chat.session import TextDeltas, chat_prompt_ids
from stepaudio.chat.template import ChatTurn


class ByteTokenizer:
    """Ids are UTF-8 bytes + 10; decode replaces an incomplete trailing character with U+FFFD like SentencePiece."""

    def encode(self, text, add_bos=False):
        return ([1] if add_bos else []) + [b + 10 for b in text.encode()]

    def decode(self, ids):
        return bytes(i - 10 for i in ids if i >= 10).decode("utf-8", errors="replace")


def test_prompt_ids_start_with_bos_and_respect_the_context_limit():
    tok = ByteTokenizer()
    ids = chat_prompt_ids(tok, [ChatTurn("user", "hi")], max_context_tokens=100)
    assert ids[0] == 1 and tok.decode(ids[1:]) == "<|BOT|>human\nhi<|EOT|><|BOT|>assistant\n"
    with pytest.raises(ValueError, match="context limit is 20"):
        chat_prompt_ids(tok, [ChatTurn("user", "hi")], max_context_tokens=20)


def test_text_deltas_hold_back_split_characters():
    tok = ByteTokenizer()
    deltas = TextDeltas(tok)
    pieces = [deltas.feed(i) for i in tok.encode("a你b")]
    assert pieces == ["a", "", "", "你", "b"]
    assert "".join(pieces) == deltas.text == "a你b"
