"""bench/trace_timeline.py's parsing and breakdown, fed with traces and statistics recorded from a real run
(tests/bench/data/trace_timeline/SOURCE.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import trace_timeline as tt

DATA = Path(__file__).parent / "data" / "trace_timeline"


def recorded(streams: int) -> tuple[dict, dict[int, tt.Span]]:
    run = json.loads((DATA / f"streams{streams}.json").read_text())
    spans = tt.parse_trace(tt.read_trace_files(sorted(DATA.glob("trace.json.*"))))
    return run, spans


def test_the_ensemble_trace_is_one_tree_with_the_bls_calls_under_their_caller():
    spans = tt.parse_trace(tt.read_trace_files([DATA / "ensemble_tts.trace.json"]))
    by_model = {span.model: span for span in spans.values()}
    assert set(by_model) == {"ensemble_tts", "tts", "tts_frontend", "tts_llm", "flow_decoder", "vocoder"}
    for model in ("tts_frontend", "tts_llm", "flow_decoder", "vocoder"):
        assert by_model["ensemble_tts"] in tt.ancestors(spans, by_model[model].id), model
    # BLS calls made inside tts's execute carry its trace (stepaudio_triton/adapter.py): they are its children.
    for model in ("tts_frontend", "tts_llm"):
        assert by_model[model].parent == by_model["tts"].id
    assert tt.ancestors(spans, by_model["ensemble_tts"].id) == []
    assert all(len(times) == 1 for times in by_model["flow_decoder"].events.values())


def test_stream_roots_keep_the_window_and_skip_children():
    spans = tt.parse_trace(tt.read_trace_files([DATA / "ensemble_tts.trace.json"]))
    assert [s.model for s in tt.stream_roots(spans, model="ensemble_tts")] == ["ensemble_tts"]
    assert tt.stream_roots(spans, model="tts") == [], "a child span is no root"
    start = next(iter(tt.stream_roots(spans, model="ensemble_tts"))).first("REQUEST_START")
    assert tt.stream_roots(spans, model="ensemble_tts", since_ns=start + 1) == []
    assert tt.stream_roots(spans, model="ensemble_tts", until_ns=start - 1) == []


def test_the_stream_timeline_steps_add_up_to_its_first_chunk():
    run, spans = recorded(1)
    roots = [spans[i] for i in run["trace_ids"]]
    assert [r.model for r in roots] == ["tts_stream", "tts_stream"]
    for root, result in zip(roots, sorted(run["results"], key=lambda r: r["start_ns"])):
        timeline = tt.stream_timeline(root)
        steps = {k: v for k, v in timeline.items() if k != "first_chunk_ms"}
        assert all(v >= 0 for v in steps.values()), steps
        assert sum(steps.values()) == pytest.approx(timeline["first_chunk_ms"], abs=1e-6)
        # The client's clock is Triton's (monotonic): it sent before the server read, and heard the chunk after.
        assert result["start_ns"] <= root.first("REQUEST_START")
        assert result["first_chunk_ms"] >= timeline["first_chunk_ms"]


def test_a_missing_timestamp_gives_nan_not_a_wrong_number():
    span = tt.Span(1, "tts_stream", events={"REQUEST_START": [0], "QUEUE_START": [1_000_000]})
    timeline = tt.stream_timeline(span)
    assert timeline["read → tts_stream queued"] == 1.0
    assert math.isnan(timeline["tts_stream queue"]) and math.isnan(timeline["first_chunk_ms"])


def test_the_first_send_is_the_one_after_the_first_response():
    span = tt.Span(1, "tts_stream", events={"REQUEST_START": [0], "INFER_RESPONSE_COMPLETE": [5_000_000],
                                            "GRPC_SEND_END": [9_000_000, 7_000_000, 1_000_000]})
    span.events["GRPC_SEND_END"].sort()
    assert tt.stream_timeline(span)["first_chunk_ms"] == 7.0


def test_per_call_divides_the_statistics_delta_by_the_calls():
    before = {"m": {"count": 2, "queue_ns": 1_000_000, "compute_ns": 4_000_000}}
    after = {"m": {"count": 4, "queue_ns": 5_000_000, "compute_ns": 24_000_000}}
    assert tt.per_call(before, after) == {"m": {"calls": 2, "queue_ms": 2.0, "compute_ms": 10.0}}
    assert tt.per_call(after, after)["m"] == {"calls": 0, "queue_ms": 0.0, "compute_ms": 0.0}


def test_the_first_chunk_breakdown_of_a_recorded_stream():
    run, spans = recorded(1)
    result = sorted(run["results"], key=lambda r: r["start_ns"])[0]
    calls = tt.per_call(result["before"], result["at_first"])
    assert {m: c["calls"] for m, c in calls.items()} == dict.fromkeys(tt.FIRST_CHUNK_CALLS, 1), \
        "read at the first chunk, the statistics hold exactly that chunk's calls"
    timeline = tt.stream_timeline(spans[run["trace_ids"][0]])
    breakdown = tt.first_chunk_breakdown(timeline, calls, result["first_chunk_ms"])
    compute = sum(calls[m]["compute_ms"] for m in ("tts_frontend", "flow_decoder", "vocoder"))  # tts_llm: hand-off
    assert breakdown["model_compute_ms"] == pytest.approx(compute)
    assert breakdown["overhead_ms"] == pytest.approx(timeline["first_chunk_ms"] - compute)
    assert breakdown["client_overhead_ms"] == pytest.approx(result["first_chunk_ms"] - compute)
    rows = {name.strip(): (wait, comp) for name, wait, comp in breakdown["rows"]}
    rest = rows["rest: LLM steps to the first chunk's ids, BLS hops, Python"][0]
    inside = sum(calls[m]["queue_ms"] + calls[m]["compute_ms"] for m in tt.FIRST_CHUNK_CALLS)
    assert rest == pytest.approx(timeline["stream thread → first response"] - inside)
    assert 0 < rest < timeline["stream thread → first response"]
    # The called models sit inside the stream thread's window, in path order.
    names = [name.strip() for name, _, _ in breakdown["rows"]]
    assert names.index("stream thread → first response") < names.index("tts_frontend") \
        < names.index("tts_llm (execute: hand-off)") < names.index("vocoder") \
        < names.index("first response → written")


def test_the_summary_is_the_median_and_prints_the_overhead():
    run, spans = recorded(2)
    breakdowns = [tt.first_chunk_breakdown(tt.stream_timeline(spans[i]), run["round_calls"], r["first_chunk_ms"])
                  for i, r in zip(run["trace_ids"], sorted(run["results"], key=lambda r: r["start_ns"]))]
    summary = tt.median_breakdown(breakdowns)
    assert summary["streams"] == 2
    assert summary["first_chunk_ms"] == pytest.approx(sum(b["first_chunk_ms"] for b in breakdowns) / 2)
    assert len(summary["rows"]) == len(breakdowns[0]["rows"])
    text = tt.format_breakdown("title", summary)
    assert f"overhead (first chunk − compute) {summary['overhead_ms']:.1f} ms" in text
    assert text.count("\n") == len(summary["rows"]) + 3
