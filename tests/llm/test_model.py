from __future__ import annotations

import math

import pytest
import torch

from stepaudio.llm.config import Step1Config
from stepaudio.llm.model import alibi_slopes, alibi_sqrt_bias
from tests.llm.helpers import naive_logits, random_prompt


def test_slopes_48_heads_match_the_spec_table():
    # docs/checkpoints.md#step1-architecture: TTS-3B = 2^(-k/4) for k = 1..32, then 2^(-k/8) for odd k = 1..31.
    expected = [2 ** (-k / 4) for k in range(1, 33)] + [2 ** (-k / 8) for k in range(1, 32, 2)]
    torch.testing.assert_close(alibi_slopes(48), torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)


def test_slopes_96_heads_match_the_spec_table():
    # Chat: 2^(-k/8) for k = 1..64, then 2^(-k/16) for odd k = 1..63.
    expected = [2 ** (-k / 8) for k in range(1, 65)] + [2 ** (-k / 16) for k in range(1, 64, 2)]
    torch.testing.assert_close(alibi_slopes(96), torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)


def test_slopes_power_of_two_heads_are_plain_alibi():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-k for k in range(1, 9)]), rtol=1e-6, atol=0)


def test_bias_is_minus_slope_sqrt_distance_and_causal():
    slopes = torch.tensor([0.5, 0.25])
    positions = torch.tensor([[0, 1, 2], [3, 4, 5]])
    bias = alibi_sqrt_bias(slopes, positions, key_length=6, dtype=torch.float32)
    assert bias.shape == (2, 2, 3, 6)
    for b in range(2):
        for h, slope in enumerate([0.5, 0.25]):
            for row in range(3):
                query = int(positions[b, row])
                for key in range(6):
                    value = float(bias[b, h, row, key])
                    if key > query:
                        assert value == -math.inf
                    else:
                        assert value == pytest.approx(-slope * math.sqrt(query - key), rel=1e-6)


@pytest.mark.parametrize("model_name", ["tts_model", "chat_model"])
def test_forward_matches_naive_reference(request, model_name):
    model = request.getfixturevalue(model_name)
    ids = random_prompt(24, seed=1)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0].double()
    expected = naive_logits(model, ids)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_kv_cache_decoding_matches_full_forward(tts_model):
    # Two sequences of different lengths in scattered slots; the long one crosses a cache growth step (256).
    # Hidden states are compared (the lm_head is one linear map on top).
    decoder = tts_model.model
    first, second = random_prompt(262, seed=2), random_prompt(40, seed=3)
    slots = [3, 1]
    with torch.inference_mode():
        full = [decoder(torch.tensor([s]))[0] for s in (first, second)]
        cache = tts_model.new_cache(num_slots=4, max_len=512)
        incremental = [
            [decoder(torch.tensor([first[:250]]), torch.arange(250)[None], cache, [slots[0]])[0]],
            [decoder(torch.tensor([second[:30]]), torch.arange(30)[None], cache, [slots[1]])[0]],
        ]
        # Both sequences in one forward per step, each at its own position.
        for step in range(10):
            ids = torch.tensor([[first[250 + step]], [second[30 + step]]])
            out = decoder(ids, torch.tensor([[250 + step], [30 + step]]), cache, slots)
            incremental[0].append(out[0])
            incremental[1].append(out[1])
        for step in range(10, 12):  # the long one alone, past the first capacity block
            ids = torch.tensor([[first[250 + step]]])
            incremental[0].append(decoder(ids, torch.tensor([[250 + step]]), cache, [slots[0]])[0])
    assert cache.capacity >= 262
    torch.testing.assert_close(torch.cat(incremental[0]), full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(incremental[1]), full[1], rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_bad_configs(tts_model):
    config = tts_model.config
    data = config.to_dict()
    assert data["architectures"] == ["Step1ForCausalLM"] and data["model_type"] == "step1"
    assert Step1Config.from_dict(data) == config
    with pytest.raises(ValueError, match="missing key"):
        Step1Config.from_dict({k: v for k, v in data.items() if k != "num_attention_groups"})
    with pytest.raises(ValueError, match="model_type"):
        Step1Config.from_dict({**data, "model_type": "llama"})
    with pytest.raises(ValueError, match="not divisible by num_attention_groups"):
        Step1Config.from_dict({**data, "num_attention_groups": 3})
