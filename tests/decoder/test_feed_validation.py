"""Feed validation of the served flow_decoder / vocoder: every rule rejects its hostile value with ValueError, and the
feeds Token2WavBase builds from valid requests pass."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from stepaudio.decoder.token2wav import (
    DecoderNoise,
    Token2WavRequest,
    flow_feed_validator,
    mel_frames_for_tokens,
    validate_flow_feeds,
    validate_vocoder_feeds,
    vocoder_feed_validator,
)
from tests.decoder.inputs import make_tokens, make_voice

CAPS = {"max_tokens": 400, "max_mel_frames": 800}


@pytest.fixture(scope="module")
def requests(token2wav):
    """Three valid requests of different lengths, the last without a voice prompt."""
    out = []
    for seed, (n_tokens, n_prompt, n_frames) in enumerate([(30, 12, 25), (17, 5, 11), (9, 0, 0)]):
        prompt_tokens, prompt_mel, speaker = make_voice(seed, n_prompt, n_frames)
        request = Token2WavRequest(make_tokens(seed, n_tokens), prompt_tokens, prompt_mel, speaker)
        request.validate(token2wav.config)
        out.append(request)
    return out


@pytest.fixture(scope="module")
def noises(token2wav, requests):
    return [DecoderNoise.from_seed(i, r.prompt_mel.shape[0], r.tokens.size, token2wav.config) for i, r in enumerate(requests)]


@pytest.fixture
def flow(token2wav, requests, noises):
    return token2wav.flow_feeds(requests, [n.flow for n in noises])


@pytest.fixture
def vocoder(token2wav, requests, noises):
    mels = [np.zeros((80, mel_frames_for_tokens(r.tokens.size)), np.float32) for r in requests]
    return token2wav.vocoder_feeds(mels, [n.source_phase for n in noises], [n.source_noise for n in noises])


def check_flow(feeds, config, **caps):
    validate_flow_feeds(feeds, config, **(CAPS | caps))


def check_vocoder(feeds, config, max_mel_frames=CAPS["max_mel_frames"]):
    validate_vocoder_feeds(feeds, config, max_mel_frames)


def test_feeds_built_from_valid_requests_pass(token2wav, flow, vocoder):
    check_flow(flow, token2wav.config)
    check_vocoder(vocoder, token2wav.config)
    for i in range(3):  # each row alone, as a single request would send it
        check_flow({k: v[i : i + 1] for k, v in flow.items()}, token2wav.config)


def _set(name, row, value):
    def change(feeds):
        feeds[name] = feeds[name].copy()
        feeds[name][row] = value
    return change


def _replace(name, make):
    def change(feeds):
        feeds[name] = make(feeds[name])
    return change


FLOW_CASES = {
    "id 5120": (_set("tokens", (0, 3), 5120), "contains id 5120"),
    "id -1": (_set("tokens", (1, 0), -1), "contains id -1"),
    "id -5120": (_set("tokens", (2, 8), -5120), "contains id -5120"),
    "prompt id 5120": (_set("prompt_tokens", (0, 0), 5120), "prompt_tokens contains id 5120"),
    "id in the padding": (_set("tokens", (2, 20), 9999), "contains id 9999"),
    "float ids": (_replace("tokens", lambda t: t.astype(np.float32)), "tokens must be integers"),
    "token_lens -5": (_set("token_lens", 0, -5), "token_lens -5 is out of range [1, 30]"),
    "token_lens 0": (_set("token_lens", 2, 0), "token_lens 0 is out of range"),
    "token_lens 1e12": (_set("token_lens", 0, 10**12), "token_lens 1000000000000 is out of range"),
    "token_lens 2^62": (_set("token_lens", 1, 2**62), f"token_lens {2**62} is out of range"),
    "token_lens past the padding": (_set("token_lens", 0, 31), "token_lens 31 is out of range"),
    "prompt_token_lens -1": (_set("prompt_token_lens", 0, -1), "prompt_token_lens -1 is out of range [0, 12]"),
    "prompt_mel_lens 1e9": (_set("prompt_mel_lens", 0, 10**9), "prompt_mel_lens 1000000000 is out of range [0, 25]"),
    "float lens": (_replace("token_lens", lambda t: t.astype(np.float64)), "token_lens must be integers"),
    "noise shorter than the prompt": (_replace("noise", lambda n: n[:, :, :20]), "noise has 20 frames"),
    "noise one frame short": (_replace("noise", lambda n: n[:, :, :-1]), "target frames"),
    "NaN speaker embedding": (_set("speaker_embedding", (1, 5), np.nan), "speaker_embedding must be finite"),
    "NaN prompt mel": (_set("prompt_mel", (0, 3, 7), np.nan), "prompt_mel must be finite"),
    "inf prompt mel in the padding": (_set("prompt_mel", (1, 20, 0), np.inf), "prompt_mel must be finite"),
    "NaN noise": (_set("noise", (2, 0, 4), np.nan), "noise must be finite"),
    "int speaker embedding": (_replace("speaker_embedding", lambda s: s.astype(np.int64)), "speaker_embedding must be finite floats"),
    "191-d speaker embedding": (_replace("speaker_embedding", lambda s: s[:, :191]), "speaker_embedding must have shape (batch, 192)"),
    "79 mel channels": (_replace("prompt_mel", lambda m: m[:, :, :79]), "prompt_mel must have shape"),
    "noise of 81 channels": (_replace("noise", lambda n: np.concatenate([n, n[:, :1]], 1)), "noise must have shape"),
    "lens with a second dim": (_replace("token_lens", lambda t: t[:, None]), "token_lens must have 1 dims"),
    "a row missing": (_replace("speaker_embedding", lambda s: s[:2]), "speaker_embedding has 2 rows"),
    "prompt tokens without prompt mel": (_set("prompt_mel_lens", 1, 0), "both 0 or both > 0"),
    "prompt mel without prompt tokens": (_set("prompt_token_lens", 1, 0), "both 0 or both > 0"),
    "missing input": (lambda f: f.pop("noise"), "inputs must be"),
    "extra input": (lambda f: f.update(extra=np.zeros(3)), "inputs must be"),
}


def test_flow_caps_on_ids_and_mel_frames(token2wav, flow):
    width = flow["noise"].shape[2]
    n_ids = flow["tokens"].shape[1] + flow["prompt_tokens"].shape[1]
    check_flow(flow, token2wav.config, max_tokens=n_ids, max_mel_frames=width)  # exactly at the caps
    with pytest.raises(ValueError, match=f"{n_ids} decoder ids per row .* limit of {n_ids - 1}"):
        check_flow(flow, token2wav.config, max_tokens=n_ids - 1)
    with pytest.raises(ValueError, match=f"{width} mel frames per row .* limit of {width - 1}"):
        check_flow(flow, token2wav.config, max_mel_frames=width - 1)


def test_zero_rows_are_rejected(token2wav, flow):
    with pytest.raises(ValueError, match="rows"):
        check_flow({k: v[:0] for k, v in flow.items()}, token2wav.config)


VOCODER_CASES = {
    "NaN mel": (_set("mel", (0, 3, 4), np.nan), "mel must be finite"),
    "inf mel": (_set("mel", (2, 0, 0), -np.inf), "mel must be finite"),
    "NaN phase": (_set("source_phase", (1, 2), np.nan), "source_phase must be finite"),
    "NaN source noise": (_set("source_noise", (0, 8, 100), np.nan), "source_noise must be finite"),
    "mel_lens 0": (_set("mel_lens", 0, 0), "mel_lens 0 is out of range [1, 62]"),
    "mel_lens past the padding": (_set("mel_lens", 1, 63), "mel_lens 63 is out of range"),
    "mel_lens 2^62": (_set("mel_lens", 1, 2**62), "out of range"),
    "short source noise": (_replace("source_noise", lambda n: n[:, :, :-256]), "source_noise must have 15872 samples"),
    "long source noise": (_replace("source_noise", lambda n: np.concatenate([n, n], 2)), "source_noise must have 15872"),
    "8 harmonics": (_replace("source_phase", lambda p: p[:, :8]), "source_phase must have shape"),
    "79 mel channels": (_replace("mel", lambda m: m[:, :79]), "mel must have shape"),
    "int mel": (_replace("mel", lambda m: m.astype(np.int32)), "mel must be finite floats"),
}


CASES = [("flow", name, *case) for name, case in FLOW_CASES.items()] + [
    ("vocoder", name, *case) for name, case in VOCODER_CASES.items()
]


@pytest.mark.parametrize("model, case, change, message", CASES, ids=[f"{m}: {c}" for m, c, *_ in CASES])
def test_rule_rejects(request, token2wav, model, case, change, message):
    feeds = request.getfixturevalue(model)
    change(feeds)
    with pytest.raises(ValueError, match=re.escape(message)):
        (check_flow if model == "flow" else check_vocoder)(feeds, token2wav.config)


def test_vocoder_cap_on_mel_frames(token2wav, vocoder):
    frames = vocoder["mel"].shape[2]
    check_vocoder(vocoder, token2wav.config, max_mel_frames=frames)
    with pytest.raises(ValueError, match=f"{frames} mel frames per row exceeds the limit of {frames - 1}"):
        check_vocoder(vocoder, token2wav.config, max_mel_frames=frames - 1)


def test_shapes_come_from_the_config(token2wav, flow, vocoder):
    config = token2wav.config
    narrow = dataclasses.replace(config, flow=dataclasses.replace(config.flow, spk_embed_dim=64, vocab_size=1024))
    flow["speaker_embedding"] = flow["speaker_embedding"][:, :64].copy()
    flow["tokens"] = flow["tokens"] % 1024
    flow["prompt_tokens"] = flow["prompt_tokens"] % 1024
    check_flow(flow, narrow)
    flow["tokens"][0, 0] = 1024
    with pytest.raises(ValueError, match=r"in \[0, 1024\)"):
        check_flow(flow, narrow)
    more_harmonics = dataclasses.replace(config, hift=dataclasses.replace(config.hift, nb_harmonics=9))
    with pytest.raises(ValueError, match=r"source_phase must have shape \(batch, 10\)"):
        check_vocoder(vocoder, more_harmonics)


def test_validator_factories_read_the_model_parameters(speech_dir, flow, vocoder):
    parameters = {"decoder_dir": str(speech_dir), "max_tokens": "400", "max_mel_frames": "800"}
    flow_check, vocoder_check = flow_feed_validator(parameters), vocoder_feed_validator(parameters)
    flow_check(flow)
    vocoder_check(vocoder)
    with pytest.raises(ValueError, match="limit of 10"):
        flow_feed_validator(parameters | {"max_tokens": "10"})(flow)
    with pytest.raises(ValueError, match="limit of 10"):
        vocoder_feed_validator(parameters | {"max_mel_frames": "10"})(vocoder)
    with pytest.raises(ValueError, match="'max_tokens'"):
        flow_feed_validator({k: v for k, v in parameters.items() if k != "max_tokens"})
    with pytest.raises(ValueError, match="'max_mel_frames' must be ≥ 1"):
        vocoder_feed_validator(parameters | {"max_mel_frames": "0"})
    with pytest.raises(ValueError, match="decoder_dir"):
        vocoder_feed_validator({"max_mel_frames": "10"})
