"""Client-driven turns (``stepaudio.realtime.turns``) and the controller's client-side entry points."""

from __future__ import annotations

import json

import pytest

from stepaudio.realtime import RealtimeConfig, RealtimeController, VadFrame
from stepaudio.realtime.controller import CancelReply, SpeechStopped, StartReply, TurnState
from stepaudio.realtime.turns import (
    MAX_CONTROL_BYTES,
    CreateResponse,
    PendingInput,
    TruncateReply,
    TurnDetection,
    UpdateSession,
    UserText,
    heard_text,
    parse_control,
)
from stepaudio.realtime.vad import WINDOW_SECONDS


def test_controls_parse_into_their_dataclasses():
    update = parse_control(json.dumps({"type": "session", "turn_detection": {"type": "server_vad", "threshold": 0.6,
                                                                             "silence_duration_ms": 800},
                                       "instructions": "Be brief.", "speaker": "Tingting"}))
    assert isinstance(update, UpdateSession) and update.manual is False and update.turn_detection.threshold == 0.6
    assert parse_control('{"type": "session", "turn_detection": null}').manual is True
    assert parse_control('{"type": "session"}').manual is None  # left out: unchanged
    assert parse_control('{"type": "text", "text": "hi"}') == UserText("hi")
    assert parse_control('{"type": "response.create", "audio": false}') == CreateResponse(None, False)
    assert parse_control('{"type": "truncate", "response_id": "resp_1", "audio_end_ms": 250}') == TruncateReply(
        "resp_1", 250.0)


@pytest.mark.parametrize("message", [
    "not json", "[]", '{"type": "nope"}', '{"type": "text", "text": ""}', '{"type": "text", "text": 5}',
    '{"type": "text", "text": "' + "x" * 5000 + '"}', '{"type": "truncate", "response_id": "r", "audio_end_ms": -1}',
    '{"type": "truncate", "response_id": "r", "audio_end_ms": true}',
    '{"type": "session", "turn_detection": {"type": "semantic_vad"}}',
    '{"type": "session", "turn_detection": {"threshold": 2}}',
    '{"type": "session", "turn_detection": {"create_response": "yes"}}',
    '{"type": "session", "speaker": " "}', '{"type": "response.create", "audio": 1}',
    '{"type": "text", "text": "' + "x" * MAX_CONTROL_BYTES + '"}',
])
def test_hostile_controls_are_refused_with_a_message(message):
    with pytest.raises(ValueError) as raised:
        parse_control(message)
    assert str(raised.value)


def test_turn_detection_maps_onto_the_controller_config():
    base = RealtimeConfig()
    config = TurnDetection(threshold=0.7, silence_duration_ms=150, create_response=False).controller_config(base)
    assert (config.speech_threshold, config.end_of_turn_ms, config.pause_ms) == (0.7, 150, 150)
    assert config.silence_threshold == pytest.approx(0.55) and config.create_response is False


def test_pending_input_commits_spans_and_refuses_an_empty_buffer():
    pending = PendingInput()
    with pytest.raises(ValueError):
        pending.commit(0.05)
    assert pending.commit(1.0) == (0.0, 1.0) and pending.commit(2.5) == (1.0, 2.5)
    pending.add_text("hello")
    assert pending.take() == ((0.0, 2.5), "hello") and pending.empty()


def test_heard_text_keeps_whole_sentences_then_a_share_of_the_next():
    sentences = [("One two.", 1.0), ("Three four five six.", 2.0)]
    assert heard_text(sentences, 5.0) == "One two. Three four five six."
    assert heard_text(sentences, 1.0) == "One two."
    assert heard_text(sentences, 2.0) == "One two. Three four"  # half of the second sentence's characters
    assert heard_text(sentences, 0.0) == ""


def _frames(controller, probabilities, start=0):
    actions = []
    for i, p in enumerate(probabilities):
        actions += controller.on_frame(VadFrame((start + i) * WINDOW_SECONDS, p))
    return actions


def test_create_response_off_commits_the_turn_and_the_client_starts_the_reply():
    controller = RealtimeController(RealtimeConfig(create_response=False))
    actions = _frames(controller, [0.0] * 5 + [0.95] * 20 + [0.0] * 25)
    stopped = [a for a in actions if isinstance(a, SpeechStopped)]
    assert len(stopped) == 1 and not any(isinstance(a, StartReply) for a in actions)
    assert stopped[0].audio_start_s == pytest.approx(5 * WINDOW_SECONDS)
    assert controller.state is TurnState.SILENCE
    reply = controller.start_reply(stopped[0].audio_start_s, stopped[0].audio_end_s)
    assert not reply.speculative and controller.state is TurnState.BOT_REPLYING
    with pytest.raises(ValueError):
        controller.start_reply(0.0, 1.0)  # one response at a time
    cancel = controller.cancel_reply()
    assert cancel == CancelReply(reply.reply_id, "client_cancelled") and controller.cancel_reply() is None
    assert controller.state is TurnState.SILENCE


def test_interrupt_response_off_lets_the_reply_play_over_speech():
    controller = RealtimeController(RealtimeConfig(interrupt_response=False, speculation=False))
    _frames(controller, [0.95] * 20 + [0.0] * 25)
    assert controller.state is TurnState.BOT_REPLYING
    actions = _frames(controller, [0.95] * 10, start=45)
    assert not any(isinstance(a, CancelReply) for a in actions) and controller.state is TurnState.BOT_REPLYING
