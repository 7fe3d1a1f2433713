from __future__ import annotations

import numpy as np
import pytest
import torch

from stepaudio.llm import engine as engine_module
from stepaudio.llm.engine import GenerationEngine, GenerationRequest, TorchStep1Engine
from stepaudio.llm.sampling import SamplingParams, apply_repetition_rule
from tests.llm.helpers import random_prompt

PROMPT_LENGTHS = (5, 23, 11, 40)


@pytest.fixture(scope="module")
def engine(tts_model):
    # A small prefill chunk so prompts span several chunks and batch rows finish in different chunks.
    with TorchStep1Engine(tts_model, max_batch_size=4, prefill_chunk=8) as running:
        yield running


def test_native_engine_is_a_generation_engine(engine):
    # build_engine hands either engine to the served models as a GenerationEngine; they call only its members.
    assert isinstance(engine, GenerationEngine)


def _requests(greedy: bool, max_new_tokens: int = 12) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            random_prompt(length, seed=10 + i),
            SamplingParams(temperature=0 if greedy else 0.9, seed=100 + i, max_new_tokens=max_new_tokens),
            request_id=f"r{i}",
        )
        for i, length in enumerate(PROMPT_LENGTHS)
    ]


def test_greedy_generation_equals_a_plain_no_cache_loop(engine, tts_model):
    request = _requests(greedy=True)[1]
    context = list(request.prompt_ids)
    expected = []
    with torch.inference_mode():
        for _ in range(request.sampling.max_new_tokens):
            logits = tts_model(torch.tensor([context]))[0, -1].float()
            apply_repetition_rule(logits, context, window=10, threshold=0.1)
            token = int(logits.argmax())
            expected.append(token)
            context.append(token)
    assert engine.generate([request]) == [expected]


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "seeded-sampling"])
def test_batched_equals_unbatched(engine, greedy):
    solo = [engine.generate([request])[0] for request in _requests(greedy)]
    batched = engine.generate(_requests(greedy))
    assert batched == solo
    assert all(len(tokens) == 12 for tokens in solo)
    assert len({tuple(tokens) for tokens in solo}) == len(solo)


def test_bias_budget_shrinks_prefill_chunks_without_changing_results(engine, tts_model, monkeypatch):
    expected = engine.generate(_requests(greedy=True))
    # 8 heads: 4 rows × 8 heads × width × (start + width) keys must stay <= 2048.
    monkeypatch.setattr(engine_module, "PREFILL_BIAS_BUDGET", 2048)
    with TorchStep1Engine(tts_model, max_batch_size=4, prefill_chunk=8) as small_chunks:
        assert [small_chunks._prefill_width(rows=4, start=s) for s in (0, 12, 40)] == [8, 4, 1]
        assert small_chunks.generate(_requests(greedy=True)) == expected


def test_requests_join_and_leave_the_running_batch(tts_model):
    params = lambda n, seed: SamplingParams(temperature=0.9, seed=seed, max_new_tokens=n)  # noqa: E731
    long = GenerationRequest(random_prompt(30, seed=1), params(150, 1), "long")
    short = GenerationRequest(random_prompt(9, seed=2), params(8, 2), "short")
    late = GenerationRequest(random_prompt(17, seed=3), params(8, 3), "late")
    with TorchStep1Engine(tts_model, max_batch_size=2, prefill_chunk=8) as engine:
        expected = {r.request_id: engine.generate([r])[0] for r in (long, short, late)}
        long_stream = engine.submit(long)
        head = [next(long_stream) for _ in range(3)]
        # Two more requests for one free slot: "late" waits until "short" leaves, then joins beside "long".
        short_stream, late_stream = engine.submit(short), engine.submit(late)
        results = {"long": head + list(long_stream), "short": list(short_stream), "late": list(late_stream)}
    assert results == expected
    assert 0 < short_stream.admitted_at_step < long_stream.finished_at_step
    assert short_stream.finished_at_step <= late_stream.admitted_at_step < long_stream.finished_at_step
    assert [s.finish_reason for s in (long_stream, short_stream, late_stream)] == ["length"] * 3


def test_stream_yields_incrementally_and_cancel_frees_the_slot(tts_model):
    follow_up = GenerationRequest(random_prompt(12, seed=4), SamplingParams(seed=4, max_new_tokens=6))
    with TorchStep1Engine(tts_model, max_batch_size=1) as engine:
        expected = engine.generate([follow_up])[0]
        stream = engine.submit(GenerationRequest(random_prompt(8, seed=5), SamplingParams(seed=5, max_new_tokens=5000)))
        first = [next(stream) for _ in range(3)]
        assert len(first) == 3 and not stream.finished  # tokens arrive long before the request could finish
        stream.cancel()
        assert list(stream) == []
        # The only slot must be free again for this to finish.
        assert engine.generate([follow_up]) == [expected]
        assert stream.wait(timeout=10)
    assert stream.finish_reason == "cancelled"
    assert stream.finished_at_step < 5000


def test_stop_id_ends_the_stream_without_being_yielded(tts_model):
    request = _requests(greedy=True, max_new_tokens=10)[0]
    with TorchStep1Engine(tts_model, max_batch_size=2) as engine:
        reference = engine.generate([request])[0]
    stop_id = reference[4]
    cut = reference.index(stop_id)
    with TorchStep1Engine(tts_model, max_batch_size=2, eos_token_id=stop_id) as engine:
        stream = engine.submit(request)
        assert list(stream) == reference[:cut]
    assert stream.finish_reason == "eos"


def test_numpy_prompts_are_accepted(engine):
    request = _requests(greedy=True, max_new_tokens=4)[2]
    as_array = GenerationRequest(np.array(request.prompt_ids, dtype=np.int64), request.sampling)
    assert engine.generate([as_array]) == engine.generate([request])


def test_length_limits(tts_model):
    prompt = random_prompt(10, seed=6)
    with TorchStep1Engine(tts_model, max_batch_size=2, max_seq_len=14) as engine:
        by_tokens = engine.submit(GenerationRequest(prompt[:5], SamplingParams(max_new_tokens=3)))
        by_window = engine.submit(GenerationRequest(prompt, SamplingParams(max_new_tokens=100)))
        assert len(list(by_tokens)) == 3 and len(list(by_window)) == 4  # prompt + output stop at max_seq_len
        assert by_tokens.finish_reason == by_window.finish_reason == "length"


@pytest.mark.parametrize(
    "prompt, sampling, message",
    [
        ([], SamplingParams(), "prompt_ids is empty"),
        (list(range(5, 69)), SamplingParams(), "max_seq_len 64 leaves no room"),
        ([5, 74752], SamplingParams(), "outside the vocabulary"),
        ([5, -1], SamplingParams(), "outside the vocabulary"),
        ([5, 1.0], SamplingParams(), "must hold integers"),
        ("hello", SamplingParams(), "sequence of token ids"),
        ([5, 6], SamplingParams(temperature=-1), "temperature"),
        ([5, 6], SamplingParams(top_p=float("nan")), "top_p"),
        ([5, 6], SamplingParams(max_new_tokens=0), "max_new_tokens"),
        ([5, 6], SamplingParams(top_k=-5), "top_k"),
    ],
)
def test_bad_requests_raise_value_error(tts_model, prompt, sampling, message):
    with TorchStep1Engine(tts_model, max_batch_size=1, max_seq_len=64) as engine:
        with pytest.raises(ValueError, match=message):
            engine.submit(GenerationRequest(prompt, sampling))
        with pytest.raises(ValueError, match=message):
            engine.generate([GenerationRequest([5, 6, 7], SamplingParams(max_new_tokens=1)), GenerationRequest(prompt, sampling)])


def test_a_failing_step_fails_its_streams_and_the_engine_recovers(tts_model, monkeypatch):
    request = GenerationRequest(random_prompt(6, seed=7), SamplingParams(temperature=0, max_new_tokens=4))
    with TorchStep1Engine(tts_model, max_batch_size=2) as engine:
        expected = engine.generate([request])[0]

        def broken(*args, **kwargs):
            raise RuntimeError("device lost")

        monkeypatch.setattr(tts_model.lm_head, "forward", broken)
        stream = engine.submit(request)
        with pytest.raises(RuntimeError, match="device lost"):
            list(stream)
        assert stream.finish_reason == "error"
        monkeypatch.undo()
        assert engine.generate([request]) == [expected]


def test_shutdown_cancels_running_streams_and_refuses_new_ones(tts_model):
    engine = TorchStep1Engine(tts_model, max_batch_size=1)
    running = engine.submit(GenerationRequest(random_prompt(6, seed=8), SamplingParams(max_new_tokens=5000)))
    next(running)
    engine.shutdown()
    assert running.finish_reason == "cancelled"
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit(GenerationRequest([5, 6], SamplingParams()))


def test_engine_arguments_are_checked(tts_model):
    with pytest.raises(ValueError, match="max_batch_size"):
        TorchStep1Engine(tts_model, max_batch_size=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        TorchStep1Engine(tts_model, max_seq_len=10**6)


def test_ready_takes_what_is_queued_without_waiting_and_leaves_the_end_last():
    stream = engine_module.TokenStream("r")
    assert stream.ready() == []  # nothing queued: no wait
    for token_id in (5, 6, 7):
        stream.put(token_id)
    assert next(stream) == 5 and stream.ready() == [6, 7] and stream.ready() == []
    stream.put(8)
    stream.finish(engine_module.FINISH_EOS)
    assert stream.ready() == [8]
    assert list(stream) == []  # the end is still there: iteration stops, and stops again
    assert list(stream) == [] and stream.ready() == []
