"""The streaming benches' continuity measure (bench/playback.py) on hand-made arrival timelines."""

import math

import pytest

from bench.playback import continuity, percentiles_ms

RATE = 1000  # 1000 samples = 1 s of audio


def test_chunks_that_arrive_before_the_audio_runs_out_play_without_a_gap():
    result = continuity([(0.3, 1000), (0.9, 1000), (2.2, 500)], RATE)
    assert (result.first_audio_s, result.underruns, result.worst_gap_s, result.audio_s) == (0.3, 0, 0.0, 2.5)


def test_a_late_chunk_is_an_underrun_and_shifts_the_rest_of_the_reply():
    # The first second plays 0.5–1.5; the second chunk comes at 2.0 (0.5 s gap) and plays 2.0–2.5; the third comes
    # at 2.6 (0.1 s gap after the shifted playback, not 1.1 s after the original schedule).
    result = continuity([(0.5, 1000), (2.0, 500), (2.6, 500)], RATE)
    assert result.underruns == 2
    assert math.isclose(result.worst_gap_s, 0.5)


def test_empty_chunks_are_not_audio_and_a_silent_reply_has_no_first_audio():
    result = continuity([(0.1, 0), (0.4, 200), (0.5, 0)], RATE)
    assert result.first_audio_s == 0.4 and result.underruns == 0 and result.audio_s == 0.2
    assert math.isnan(continuity([(0.1, 0)], RATE).first_audio_s)


def test_percentiles_in_milliseconds_skip_missing_values():
    assert percentiles_ms([0.1, 0.2, 0.3, float("nan")]) == pytest.approx({"p50": 200.0, "p95": 290.0})
