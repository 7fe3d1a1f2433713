"""Chat template and text-history parsing."""

from __future__ import annotations

import pytest

from stepaudio.chat.template import ChatTurn, asr_turns, contract_data, render_chat, turns_from_json


def test_text_and_audio_turns_render_like_the_reference():
    turns = [ChatTurn("system", "be brief"), ChatTurn("user", "hi"), ChatTurn("assistant", "hello"),
             ChatTurn("user", audio_ids=(65536 + 3, 66560 + 7))]
    assert render_chat(turns) == (
        "<|BOT|>system\nbe brief<|EOT|><|BOT|>human\nhi<|EOT|><|BOT|>assistant\nhello<|EOT|>"
        "<|BOT|>human\n<audio_3><audio_1031><|EOT|><|BOT|>assistant\n"
    )


def test_mixed_turn_puts_text_before_audio():
    assert render_chat([ChatTurn("user", "what is this?", (65536,))]).startswith("<|BOT|>human\nwhat is this?<audio_0><|EOT|>")


def test_asr_mode_uses_the_contract_prompt():
    rendered = render_chat(asr_turns([65536 + 1]))
    assert rendered.startswith("<|BOT|>system\n" + contract_data()["asr_system_prompt"] + "<|EOT|>")


@pytest.mark.parametrize("turns, message", [
    ([], "at least one turn"),
    ([ChatTurn("robot", "x")], "unknown chat role"),
    ([ChatTurn("user", "  ")], "needs text or audio"),
    ([ChatTurn("user", "a<|EOT|>b")], "control token"),
    ([ChatTurn("user", "<audio_5>")], "send audio as audio"),
    ([ChatTurn("user", "a"), ChatTurn("assistant", "b")], "last turn must be the user's"),
    ([ChatTurn("user", "a"), ChatTurn("system", "b"), ChatTurn("user", "c")], "system turn may only come first"),
    ([ChatTurn("assistant", "", (65536,)), ChatTurn("user", "x")], "only user turns may carry audio"),
])
def test_malformed_chats_are_rejected(turns, message):
    with pytest.raises(ValueError, match=message):
        render_chat(turns)


def test_history_json():
    assert turns_from_json('[{"role": "user", "content": "hi"}]') == [ChatTurn("user", "hi")]
    assert turns_from_json("") == []
    for bad, message in [("{", "not valid JSON"), ('{"role": "user"}', "JSON list"), ('[{"role": 1, "content": "x"}]', "item 0")]:
        with pytest.raises(ValueError, match=message):
            turns_from_json(bad)


def test_asr_budget_grows_with_the_audio():
    from stepaudio.chat.template import asr_max_new_tokens

    assert asr_max_new_tokens(0) == 16
    ten_seconds = 417  # audio ids
    assert 100 <= asr_max_new_tokens(ten_seconds) <= 140  # far above ~30-60 text tokens of 10 s of speech
