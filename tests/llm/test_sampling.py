from __future__ import annotations

import math

import pytest
import torch

from stepaudio.llm.sampling import (
    SamplingParams,
    apply_repetition_rule,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    new_generator,
    next_token,
)

INF = float("inf")


def _logits(*values):
    return torch.tensor(values, dtype=torch.float32)


class TestRepetitionRule:
    def test_no_effect_before_the_window_is_full(self):
        logits = _logits(0, 1, 2, 3)
        apply_repetition_rule(logits, [2, 2, 2], window=10, threshold=0.1)
        assert logits.tolist() == [0, 1, 2, 3]

    def test_bans_the_last_id_when_it_occurs_twice_in_the_window(self):
        logits = _logits(0, 1, 2, 3)
        apply_repetition_rule(logits, [0, 0, 0, 3, 1, 1, 0, 0, 1, 3], window=10, threshold=0.1)
        assert logits.tolist() == [0, 1, 2, -INF]

    def test_once_is_allowed(self):
        logits = _logits(0, 1, 2, 3)
        apply_repetition_rule(logits, [0, 0, 0, 0, 1, 1, 0, 0, 1, 3], window=10, threshold=0.1)
        assert logits.tolist() == [0, 1, 2, 3]

    def test_window_counts_prompt_ids_and_only_the_last_ten(self):
        # context = prompt + generated; the earlier 3 is the first id of the 10-wide window.
        context = [3, 0, 0, 0, 0, 1, 1, 0, 0, 3]
        logits = _logits(0, 1, 2, 3)
        apply_repetition_rule(logits, context, window=10, threshold=0.1)
        assert logits[3] == -INF
        logits = _logits(0, 1, 2, 3)
        apply_repetition_rule(logits, [3, 2] + context[1:], window=10, threshold=0.1)  # 3 slid out of the window
        assert logits[3] == 3

    def test_threshold_and_disabling(self):
        context = [0] * 7 + [2, 2, 2]
        logits = _logits(0, 1, 2, 3)
        apply_repetition_rule(logits, context, window=10, threshold=0.3)  # 3/10 is not > 0.3
        assert logits[2] == 2
        apply_repetition_rule(logits, context, window=10, threshold=0.25)
        assert logits[2] == -INF
        logits = _logits(0, 1, 2, 3)
        apply_repetition_rule(logits, [2] * 10, window=10, threshold=0.0)
        assert logits[2] == 2


def test_temperature_scales_logits():
    assert apply_temperature(_logits(1, 2, -4), 0.5).tolist() == [2, 4, -8]
    logits = _logits(1, 2)
    assert apply_temperature(logits, 1.0) is logits


def test_top_k_keeps_the_k_largest_and_ties():
    assert apply_top_k(_logits(1, 3, 2, 0), 2).tolist() == [-INF, 3, 2, -INF]
    assert apply_top_k(_logits(1, 2, 2, 0), 2).tolist() == [-INF, 2, 2, -INF]
    assert apply_top_k(_logits(1, 2, 2, 0), 1).tolist() == [-INF, 2, 2, -INF]  # ties with the k-th stay
    assert apply_top_k(_logits(1, 3, 2, 0), 0).tolist() == [1, 3, 2, 0]


def test_top_p_drops_the_unlikely_tail():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))
    # ascending cumulative: 0.05, 0.20, 0.50, 1.00; drop those <= 1 - top_p
    kept = lambda top_p: torch.isfinite(apply_top_p(logits, top_p)).tolist()  # noqa: E731
    assert kept(0.8) == [False, True, False, True]
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.9) == [False, True, True, True]
    assert kept(0.01) == [False, True, False, False]  # the most likely id always stays
    assert kept(1.0) == [True, True, True, True]


def test_greedy_takes_the_argmax_after_the_repetition_rule():
    params = SamplingParams(temperature=0)
    generator = new_generator(0, torch.device("cpu"))
    logits = _logits(0.0, 5.0, 4.0, 1.0)
    assert next_token(logits, [0] * 9 + [3], params, generator) == 1
    assert next_token(logits, [0] * 8 + [1, 1], params, generator) == 2
    assert logits[1] == 5.0  # the caller's logits are not modified


def test_sampling_respects_filters_and_is_reproducible_per_seed():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    params = SamplingParams(temperature=1.0, top_k=2, repetition_threshold=0)

    def draws(seed):
        generator = new_generator(seed, torch.device("cpu"))
        return [next_token(logits, [0], params, generator) for _ in range(300)]

    first = draws(5)
    assert set(first) == {0, 1}
    assert 0.45 < first.count(0) / len(first) < 0.70  # renormalised 0.4 / 0.7 ≈ 0.57
    assert draws(5) == first
    assert draws(6) != first


def test_low_temperature_concentrates_samples():
    logits = _logits(1.0, 0.0)
    params = SamplingParams(temperature=0.1, top_k=0, repetition_threshold=0)
    generator = new_generator(1, torch.device("cpu"))
    draws = [next_token(logits, [0], params, generator) for _ in range(200)]
    assert draws.count(0) >= 195  # p(0) = 1 / (1 + e^-10)


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("max_new_tokens", 0),
        ("max_new_tokens", 3.0),
        ("seed", -1),
        ("seed", "7"),
        ("repetition_window", 0),
        ("repetition_threshold", 1.0),
        ("repetition_threshold", -0.1),
        ("repetition_threshold", math.nan),
    ],
)
def test_invalid_sampling_values_raise(field, value):
    params = SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=field):
        params.validate()


def test_defaults_are_the_reference_tts_settings():
    params = SamplingParams()
    params.validate()
    assert (params.temperature, params.top_k, params.top_p) == (0.7, 50, 1.0)
    assert (params.repetition_window, params.repetition_threshold) == (10, 0.1)


def test_allowed_ranges_restrict_what_can_be_sampled():
    import torch

    from stepaudio.llm.sampling import SamplingParams, new_generator, next_token

    logits = torch.zeros(100)
    logits[7] = 50.0  # by far the most likely id, but outside the allowed ranges
    params = SamplingParams(temperature=1.0, top_k=0, allowed_token_ranges=((3, 4), (60, 70)))
    generator = new_generator(0, torch.device("cpu"))
    picks = {next_token(logits, [1, 2], params, generator) for _ in range(200)}
    assert picks <= {3, *range(60, 70)} and len(picks) > 3
    greedy = SamplingParams(temperature=0.0, allowed_token_ranges=((60, 70),))
    assert next_token(logits, [1], greedy, generator) == 60


def test_allowed_ranges_are_validated():
    import pytest

    from stepaudio.llm.sampling import SamplingParams

    for bad in ((), ((5, 5),), ((-1, 3),), ((1.5, 3),)):
        with pytest.raises(ValueError, match="allowed_token_ranges"):
            SamplingParams(allowed_token_ranges=bad).validate()


def test_the_draw_among_the_filtered_ids_has_the_filtered_distribution():
    """``next_token`` draws among the ids the filters leave; the frequencies must still be the softmax of the
    filtered, tempered logits (a draw over the wrong support or weights fails this)."""
    logits = torch.full((1000,), -5.0)
    logits[[10, 500, 999, 3]] = torch.tensor([2.0, 1.0, 0.0, 3.0])
    params = SamplingParams(temperature=0.5, top_k=3, top_p=1.0, repetition_threshold=0.0)
    expected = torch.tensor([2.0, 1.0, 3.0]).div(0.5).softmax(-1)  # ids 10, 500, 3: id 999 is cut by top-k
    generator = torch.Generator().manual_seed(1)
    draws = [next_token(logits, [], params, generator) for _ in range(6000)]
    assert set(draws) <= {10, 500, 3}
    for token, p in zip((10, 500, 3), expected.tolist()):
        assert abs(draws.count(token) / len(draws) - p) < 0.02, (token, draws.count(token), p)
