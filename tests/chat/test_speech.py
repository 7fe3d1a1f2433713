"""Reply text → sentences for TTS."""

from __future__ import annotations

from stepaudio.chat.speech import SentenceSplitter, speakable


def test_sentences_come_out_as_soon_as_they_end():
    splitter = SentenceSplitter(max_chars=100)
    assert splitter.feed("你好。今天") == ["你好。"]
    assert splitter.feed("天气不错！Fine. Really") == ["今天天气不错！", "Fine."]
    assert splitter.flush() == ["Really"]
    assert splitter.flush() == []


def test_long_text_without_punctuation_is_cut_at_the_limit():
    splitter = SentenceSplitter(max_chars=4)
    assert splitter.feed("abcdefghij") == ["abcd", "efgh"]
    assert splitter.flush() == ["ij"]


def test_decimal_points_do_not_end_sentences():
    assert SentenceSplitter(100).feed("pi is 3.14 ok. next") == ["pi is 3.14 ok."]


def test_unknown_leading_asides_are_dropped_known_tags_kept():
    assert speakable("(笑)好的") == "好的"
    assert speakable("(高兴1)好的") == "(高兴1)好的"
    assert speakable("(笑)  ") == ""
