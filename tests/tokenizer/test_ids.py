"""2:3 interleave, LLM id ranges and the ``<audio_N>`` string form the Chat model reads."""

from __future__ import annotations

import pytest

from stepaudio.tokenizer import audio_string_to_ids, ids_to_audio_string, interleave


def test_interleave_groups_two_vq02_with_three_vq06_and_drops_the_tail():
    vq02 = [0, 1, 2, 3, 1023]
    vq06 = [0, 10, 20, 30, 40, 4095, 7]
    ids = interleave(vq02, vq06)
    assert ids == [65536, 65537, 66560, 66570, 66580, 65538, 65539, 66590, 66600, 70655]
    assert interleave(vq02[:1], vq06) == []  # no whole group


def test_string_form_uses_codes_with_vq06_shifted_by_1024():
    ids = interleave([5, 6], [0, 1, 4095])
    assert ids_to_audio_string(ids) == "<audio_5><audio_6><audio_1024><audio_1025><audio_5119>"


def test_string_round_trip():
    ids = interleave(list(range(0, 1024, 7))[:40], list(range(0, 4096, 13))[:60])
    assert audio_string_to_ids(ids_to_audio_string(ids)) == ids
    assert audio_string_to_ids("") == []


@pytest.mark.parametrize(
    "text",
    ["<audio_5> <audio_6>", "<audio_5120>", "<audio_-1>", "<audio_05>", "audio_5", "<audio_5><audio_6", "<|BOT|>"],
)
def test_malformed_strings_are_value_errors(text):
    with pytest.raises(ValueError):
        audio_string_to_ids(text)


@pytest.mark.parametrize("bad", [65535, 70656, 1])
def test_non_audio_ids_cannot_be_written_as_audio(bad):
    with pytest.raises(ValueError, match="not an audio id"):
        ids_to_audio_string([65536, bad])
