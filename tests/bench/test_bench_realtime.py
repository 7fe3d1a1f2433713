"""bench/bench_realtime.py's statistics on synthetic session timelines: which event answers a turn, what counts as a
speculative commit, how a barge-in is timed, and what the report says (no server, no timing)."""

from __future__ import annotations

import json

import pytest

from bench import bench_realtime as bench
from bench.bench_realtime import BARGE_ONSET, SPEECH_END, TURN_START


def mark(kind, at):
    return {"type": kind, "at": at}


def openai(kind, at, **data):
    """A server event in the OpenAI protocol's shape, slimmed as the bench keeps it."""
    return bench.slim(kind, data, at)


def created(at, rid, speculative):
    return openai("response.created", at, response={"id": rid, "status": "in_progress",
                                                    "metadata": {"speculative": speculative}})


def audio(at, rid):
    return openai("response.audio.delta", at, response_id=rid, delta="AAAA")


def done(at, rid, status="completed", transcript="Hi."):
    return openai("response.done", at, response={"id": rid, "status": status, "output": [
        {"content": [{"type": "audio", "transcript": transcript}]}]})


def turn(start, end_of_speech, rid, speculative, first_audio, last_audio, finished):
    return [mark(TURN_START, start), mark(SPEECH_END, end_of_speech), created(end_of_speech + 0.6, rid, speculative),
            audio(first_audio, rid), audio(last_audio, rid), done(finished, rid)]


def session_a():
    """Two answered turns (one speculative), then a barge-in turn: cancelled 0.25 s after the onset, its last
    audio 0.1 s after it; the interruption's own reply is speculative but belongs to no measured turn."""
    return [*turn(0.0, 1.0, "r1", False, 2.0, 2.5, 3.0),  # 1.0 s
            *turn(4.0, 5.0, "r2", True, 5.5, 6.0, 6.5),  # 0.5 s
            mark(TURN_START, 7.0), mark(SPEECH_END, 8.0), created(8.6, "r3", True), audio(9.0, "r3"),  # 1.0 s
            mark(BARGE_ONSET, 9.2), audio(9.3, "r3"), done(9.45, "r3", "cancelled"),
            mark(TURN_START, 9.5), created(10.5, "r4", True), audio(11.0, "r4"), done(12.0, "r4")]


def session_b():
    """A turn answered after 2 s, a turn whose reply spoke no audio, and a barge-in that came after the reply's
    end (nothing to interrupt: a failure, not a timing)."""
    return [*turn(0.0, 1.0, "s1", True, 3.0, 3.5, 4.0),  # 2.0 s
            mark(TURN_START, 5.0), mark(SPEECH_END, 6.0), created(6.6, "s2", True), done(7.0, "s2", transcript=""),
            mark(TURN_START, 8.0), mark(SPEECH_END, 9.0), created(9.6, "s3", False), audio(10.0, "s3"),
            done(10.2, "s3"), mark(BARGE_ONSET, 10.5), mark(TURN_START, 11.0)]


def test_one_session_turns_latencies_speculation_and_barge_in():
    m = bench.session_metrics(session_a())
    assert m["turns"] == 3 and m["latencies"] == pytest.approx([1.0, 0.5, 1.0])
    assert m["responses"] == 3 and m["speculative"] == 2  # r4 answers the interruption: not counted
    assert m["barge_to_last_audio"] == pytest.approx([0.1]) and m["barge_to_cancelled"] == pytest.approx([0.25])
    assert m["failures"] == []


def test_a_barge_in_with_no_audio_after_the_onset_is_zero_not_negative():
    timeline = [mark(TURN_START, 0.0), mark(SPEECH_END, 1.0), created(1.6, "r", False), audio(2.0, "r"),
                mark(BARGE_ONSET, 2.4), done(2.6, "r", "cancelled")]
    m = bench.session_metrics(timeline)
    assert m["barge_to_last_audio"] == [0.0] and m["barge_to_cancelled"] == pytest.approx([0.2])


def test_turns_without_audio_and_late_barge_ins_are_failures_with_their_reason():
    m = bench.session_metrics(session_b())
    assert m["turns"] == 3 and m["latencies"] == pytest.approx([2.0, 1.0])
    assert m["failures"] == ["reply completed without audio (text '')", "barge-in: reply completed before the onset"]
    assert m["barge_to_last_audio"] == [] and m["barge_to_cancelled"] == []
    unanswered = bench.session_metrics([mark(TURN_START, 0.0), mark(SPEECH_END, 1.0), mark(TURN_START, 9.0)])
    assert unanswered["failures"] == ["no reply event in time"]
    error = bench.session_metrics([mark(SPEECH_END, 1.0), openai("error", 1.5, error={"code": "x", "message": "y"})])
    assert error["failures"] == ["error x: y"]


def test_native_events_read_as_the_openai_ones():
    cancelled = bench.slim("response.cancelled", {"response_id": "r", "reason": "barge_in"}, 3.0)
    assert cancelled == {"type": "response.done", "at": 3.0, "response_id": "r", "status": "cancelled"}
    native = bench.slim("response.created", {"response": {"id": "r", "speculative": True}}, 1.0)
    assert native["speculative"] is True and native["response_id"] == "r"
    assert bench.slim("response.done", {"response": {"id": "r", "status": "completed", "output_transcript": "ok"}},
                      2.0)["transcript"] == "ok"


def test_summary_pools_the_sessions():
    row = bench.summarize([session_a(), session_b()], 2, True, {"stepaudio_realtime_replies_total:committed": 4.0})
    assert row["turns"] == 6 and row["answered"] == 5 and row["responses"] == 6
    assert row["speculative_responses"] == 4 and row["speculative_commit_rate"] == pytest.approx(4 / 6, abs=1e-3)
    # latencies 0.5, 1.0, 1.0, 1.0, 2.0 s: numpy's linear percentiles
    assert row["latency_ms"] == {"p50": 1000.0, "p95": 1800.0}
    assert row["barge_in_to_last_audio_ms"] == {"p50": 100.0, "max": 100.0}
    assert row["barge_in_to_cancelled_ms"] == {"p50": 250.0, "max": 250.0} and row["barge_ins"] == 1
    assert row["barge_in_tries"] == 2
    assert row["failures"] == {"reply completed without audio (text '')": 1,
                               "barge-in: reply completed before the onset": 1}
    assert row["server"]["speculative_committed"] == 4.0 and row["server"]["speculative_discarded"] == 0.0
    json.dumps(row, allow_nan=False)  # the --out file is strict JSON


def test_an_empty_configuration_reports_dashes_not_nan():
    row = bench.summarize([[]], 1, False)
    assert row["turns"] == 0 and row["speculative_commit_rate"] is None and row["latency_ms"]["p50"] is None
    assert "server" not in row
    json.dumps(row, allow_nan=False)
    line = bench.table([row]).splitlines()[-1]
    assert line == "| 1 | off | 0 (0) | — / — | — (0) | — / — | — / —, 0 / 0 | — | 0 |"


def test_the_table_has_one_line_per_row_with_the_rows_figures():
    rows = [bench.summarize([session_a()], 1, False), bench.summarize([session_a(), session_b()], 2, True, {})]
    lines = bench.table(rows).splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert lines[2] == "| 1 | off | 3 (3) | 1000 / 1000 | 0.67 (2) | 100 / 100 | 250 / 250, 1 / 1 | — | 0 |"
    assert lines[3].startswith("| 2 | on | 6 (5) | 1000 / 1800 | 0.67 (4) |") and lines[3].endswith("| 0 / 0 | 2 |")
