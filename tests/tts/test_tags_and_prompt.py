"""Style tags and the token-level TTS prompt (reference ``StepAudioTTS.tokenize``)."""

from __future__ import annotations

import pytest

from stepaudio.tts.prompt import BOS, BOT, EOT, build_tts_prompt, system_prompt
from stepaudio.tts.tags import contract_data, parse_style_tags


class CharTokenizer:
    """Each character → its code point + 1000; BOS optional. Enough to check the prompt's structure."""

    def encode(self, text, add_bos=False):
        return ([BOS] if add_bos else []) + [1000 + ord(c) for c in text]


def test_leading_tags_are_parsed_in_both_paren_styles():
    styled = parse_style_tags("(高兴1)（四川话）(慢速1)今天天气不错")
    assert styled.tags == ("高兴1", "四川话", "慢速1")
    assert styled.body == "今天天气不错"
    assert styled.music is None


def test_music_routing_follows_the_first_tag_only():
    assert parse_style_tags("（RAP）歌词").music == "RAP"
    assert parse_style_tags("(哼唱)歌词").music == "哼唱"
    assert parse_style_tags("(高兴1)(RAP)歌词").music is None


@pytest.mark.parametrize("text, message", [("(开心)你好", "unknown style tag"), ("(高兴1)  ", "no words")])
def test_bad_tags_are_rejected(text, message):
    with pytest.raises(ValueError, match=message):
        parse_style_tags(text)


def test_system_prompt_choice():
    prompts = contract_data()["system_prompts"]
    assert system_prompt(parse_style_tags("(RAP)唱"), "Tingting") == prompts["sys_prompt_for_rap"]
    assert system_prompt(parse_style_tags("(哼唱)唱"), "") == prompts["sys_prompt_for_vocal"]
    with_speaker = system_prompt(parse_style_tags("你好"), "Tingting")
    assert "使用[Tingting]的声音" in with_speaker
    assert system_prompt(parse_style_tags("你好"), "") == prompts["sys_prompt_wo_spk"]


def test_contract_strings_are_the_reference_bytes():
    prompts = contract_data()["system_prompts"]
    assert prompts["sys_prompt_for_rap"] == "请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"
    assert prompts["sys_prompt_with_spk"].count("{}") == 1


def test_prompt_layout_matches_the_reference_sequence():
    tok = CharTokenizer()
    text = "(高兴1)你好"
    code = [65536 + 7, 66560 + 9]
    ids = build_tts_prompt(tok, text, parse_style_tags(text), "提示", code, speaker_name="Tingting")
    sys_ids = tok.encode("system\n" + system_prompt(parse_style_tags(text), "Tingting"), add_bos=True)
    human, assistant = tok.encode("human\n", add_bos=True), tok.encode("assistant\n", add_bos=True)
    expected = (
        [BOS, BOT] + sys_ids + [EOT]
        + [BOT] + human + tok.encode("提示") + [EOT]
        + [BOT] + assistant + code + [EOT]
        + [BOT] + human + tok.encode(text) + [EOT]
        + [BOT] + assistant
    )
    assert ids == expected
    assert ids[2] == BOS  # the per-segment BOS the published tokenizer config implies


def test_prompt_without_segment_bos():
    tok = CharTokenizer()
    ids = build_tts_prompt(tok, "hi", parse_style_tags("hi"), "p", [65536], add_bos_to_segments=False)
    assert ids[:3] == [BOS, BOT, 1000 + ord("s")]
    assert ids.count(BOS) == 1
