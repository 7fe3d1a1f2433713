"""The turn-taking state machine on scripted VAD probabilities and a fake clock."""

from __future__ import annotations

import pytest

from stepaudio.realtime import (
    CancelReply,
    CommitReply,
    DiscardReply,
    RealtimeConfig,
    RealtimeController,
    SpeechStarted,
    SpeechStopped,
    StartReply,
    TurnState,
    VadFrame,
)
from stepaudio.realtime.vad import WINDOW_SECONDS


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drive(controller, script, start_window=0):
    """``script``: (probability, windows) pairs → [(window index, action)], each window 32 ms."""
    out, index = [], start_window
    for probability, count in script:
        for _ in range(count):
            for action in controller.on_frame(VadFrame(index * WINDOW_SECONDS, probability)):
                out.append((index, action))
            index += 1
    return out, index


def ms(windows: int) -> float:
    return windows * WINDOW_SECONDS


def test_one_turn_with_speculation_committed():
    c = RealtimeController(RealtimeConfig(pause_ms=200, end_of_turn_ms=600))
    events, _ = drive(c, [(0.0, 10), (0.9, 30), (0.1, 30)])
    kinds = [type(a) for _, a in events]
    assert kinds == [SpeechStarted, StartReply, SpeechStopped, CommitReply]
    started, spec, stopped, commit = (a for _, a in events)
    assert started.audio_start_s == pytest.approx(ms(10))
    assert spec.speculative and spec.audio_start_s == pytest.approx(ms(10)) and spec.audio_end_s == pytest.approx(ms(40))
    assert stopped.audio_end_s == pytest.approx(ms(40)) and commit.reply_id == spec.reply_id
    # the pause is detected after 200 ms of silence (7 windows end at 224 ms), end of turn after 600 ms (19 windows)
    assert events[1][0] == 40 + 6 and events[2][0] == 40 + 18
    assert c.state is TurnState.BOT_REPLYING
    assert (c.stats.speculative_started, c.stats.speculative_committed, c.stats.speculative_discarded) == (1, 1, 0)
    c.on_reply_finished(spec.reply_id)
    assert c.state is TurnState.SILENCE


def test_short_pause_discards_the_speculative_reply_and_the_turn_goes_on():
    c = RealtimeController(RealtimeConfig(pause_ms=200, end_of_turn_ms=600))
    events, _ = drive(c, [(0.9, 20), (0.1, 10), (0.9, 20), (0.1, 25)])
    kinds = [type(a) for _, a in events]
    assert kinds == [SpeechStarted, StartReply, DiscardReply, StartReply, SpeechStopped, CommitReply]
    first, second = events[1][1], events[3][1]
    assert events[2][1].reply_id == first.reply_id and second.reply_id != first.reply_id
    assert second.audio_start_s == pytest.approx(0.0) and second.audio_end_s == pytest.approx(ms(50))
    assert events[5][1].reply_id == second.reply_id
    assert (c.stats.speculative_started, c.stats.speculative_committed, c.stats.speculative_discarded) == (2, 1, 1)


def test_without_speculation_the_reply_starts_at_end_of_turn_on_the_same_span():
    spans = {}
    for speculation in (True, False):
        c = RealtimeController(RealtimeConfig(speculation=speculation))
        events, _ = drive(c, [(0.0, 5), (0.8, 25), (0.05, 25)])
        replies = [a for _, a in events if isinstance(a, StartReply)]
        assert len(replies) == 1 and replies[0].speculative is speculation
        spans[speculation] = (replies[0].audio_start_s, replies[0].audio_end_s)
    assert spans[True] == spans[False]


def test_hysteresis_windows_do_not_confirm_silence_but_count_once_it_is_confirmed():
    c = RealtimeController(RealtimeConfig(speech_threshold=0.5, silence_threshold=0.35, pause_ms=200, end_of_turn_ms=600))
    events, _ = drive(c, [(0.9, 10), (0.4, 6)])  # 0.4 is between the thresholds: not yet silence
    assert [type(a) for _, a in events] == [SpeechStarted]
    events, _ = drive(c, [(0.1, 1)], start_window=16)  # confirmed: silence began at the end of the last speech window
    assert [type(a) for _, a in events] == [StartReply] and events[0][1].audio_end_s == pytest.approx(ms(10))
    events, _ = drive(c, [(0.1, 12)], start_window=17)  # 19 windows (608 ms) after the speech: end of turn
    assert [type(a) for _, a in events] == [SpeechStopped, CommitReply]
    assert events[0][0] == 28 and events[0][1].audio_end_s == pytest.approx(ms(10))


def test_speech_ends_at_the_last_confident_window_when_only_the_decay_follows():
    c = RealtimeController(RealtimeConfig())
    events, _ = drive(c, [(0.99, 20), (0.7, 2), (0.1, 20)])
    stopped = next(a for _, a in events if isinstance(a, SpeechStopped))
    assert stopped.audio_end_s == pytest.approx(ms(20))  # the two 0.7 windows are Silero's decay
    c = RealtimeController(RealtimeConfig())
    events, _ = drive(c, [(0.99, 20), (0.7, 5), (0.1, 20)])  # a quieter last word: it counts
    stopped = next(a for _, a in events if isinstance(a, SpeechStopped))
    assert stopped.audio_end_s == pytest.approx(ms(25))


def test_a_short_burst_just_before_the_speech_is_its_onset():
    c = RealtimeController(RealtimeConfig(min_speech_ms=64, onset_merge_ms=250))
    events, _ = drive(c, [(0.0, 10), (0.9, 1), (0.1, 3), (0.9, 5)])
    assert events[0][1] == SpeechStarted(pytest.approx(ms(10)))
    c = RealtimeController(RealtimeConfig(min_speech_ms=64, onset_merge_ms=250))
    events, _ = drive(c, [(0.0, 10), (0.9, 1), (0.1, 10), (0.9, 5)])  # 352 ms before: a click, not the onset
    assert events[0][1] == SpeechStarted(pytest.approx(ms(21)))


def test_a_click_shorter_than_min_speech_starts_no_turn():
    c = RealtimeController(RealtimeConfig(min_speech_ms=96))
    events, _ = drive(c, [(0.0, 5), (0.9, 2), (0.0, 40)])
    assert events == [] and c.state is TurnState.SILENCE


def test_barge_in_cancels_the_reply_and_starts_a_new_turn():
    c = RealtimeController(RealtimeConfig())
    events, index = drive(c, [(0.9, 20), (0.1, 20)])
    reply = next(a for _, a in events if isinstance(a, StartReply))
    assert c.state is TurnState.BOT_REPLYING
    events, index = drive(c, [(0.1, 5), (0.9, 3)], start_window=index)
    assert [type(a) for _, a in events] == [CancelReply, SpeechStarted]
    assert events[0][1].reply_id == reply.reply_id and c.stats.barge_ins == 1
    assert events[1][1].audio_start_s == pytest.approx(ms(45))
    c.on_reply_finished(reply.reply_id)  # the cancelled reply's late end changes nothing
    assert c.state is TurnState.USER_SPEAKING
    events, _ = drive(c, [(0.1, 20)], start_window=index)  # the next turn works
    assert [type(a) for _, a in events] == [StartReply, SpeechStopped, CommitReply]


def test_a_turn_longer_than_the_limit_is_ended():
    c = RealtimeController(RealtimeConfig(max_turn_seconds=1.0))
    events, _ = drive(c, [(0.9, 40)])
    kinds = [type(a) for _, a in events]
    assert kinds == [SpeechStarted, SpeechStopped, StartReply]
    assert events[1][0] == 31  # the window that reaches 1.0 s


def test_idle_timeout_and_session_length_use_the_injected_clock():
    clock = FakeClock()
    c = RealtimeController(RealtimeConfig(idle_timeout_seconds=5, max_session_seconds=60), clock=clock)
    clock.now += 4.9
    assert c.expired() is None
    clock.now += 0.2
    assert "no audio" in c.expired()
    for _ in range(20):
        clock.now += 3
        c.on_frame(VadFrame(0.0, 0.0))
    assert "limit" in c.expired()


@pytest.mark.parametrize("bad", [dict(pause_ms=700, end_of_turn_ms=600), dict(silence_threshold=0.6),
                                 dict(idle_timeout_seconds=0), dict(min_speech_ms=-1)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        RealtimeConfig(**bad).validate()
