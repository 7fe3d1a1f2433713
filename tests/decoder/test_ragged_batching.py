"""Ragged batching of the decoder graphs (``FlowBatching`` / ``VocoderBatching``): requests of different lengths
padded into one run and cut back give what each request gets alone."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.decoder.token2wav import (
    FLOW_OUTPUTS,
    VOCODER_OUTPUTS,
    DecoderNoise,
    FlowBatching,
    Token2WavRequest,
    VocoderBatching,
    length_buckets,
)
from tests.decoder.inputs import make_tokens, make_voice


def flow_feeds(token2wav, seed, n_tokens, n_prompt, n_frames, extra_noise=0):
    request = Token2WavRequest(make_tokens(seed, n_tokens), *make_voice(seed, n_prompt, n_frames))
    request.validate(token2wav.config)
    noise = DecoderNoise.from_seed(seed, n_frames, n_tokens, token2wav.config).flow
    feeds = token2wav.flow_feeds([request], [noise])
    feeds["noise"] = np.pad(feeds["noise"], ((0, 0), (0, 0), (0, extra_noise)))  # a client may send wider noise
    return feeds


def vocoder_feeds(token2wav, seed, frames):
    mel = np.random.default_rng(seed).standard_normal((80, frames)).astype(np.float32) - 5.0
    noise = DecoderNoise.from_seed(seed, 0, 1 + frames // 2, token2wav.config)
    source = np.random.default_rng(seed).standard_normal((9, 256 * frames)).astype(np.float32)
    return token2wav.vocoder_feeds([mel], [noise.source_phase], [source])


def test_length_buckets_bound_the_padding():
    groups = length_buckets({0: 100, 1: 40, 2: 140, 3: 41, 4: 59, 5: 1000})
    assert groups == [[1, 3, 4], [0, 2], [5]]
    assert length_buckets({7: 5}) == [[7]]


def test_padded_flow_batch_cuts_back_to_each_request_alone(token2wav):
    # Different ids, prompts and noise widths; request 1 has the longer prompt but the shorter target.
    feeds = [flow_feeds(token2wav, 1, 30, 10, 20), flow_feeds(token2wav, 2, 12, 25, 50, extra_noise=3),
             flow_feeds(token2wav, 3, 22, 0, 0)]
    batching = FlowBatching()
    batch = batching.pad(feeds)
    outputs = batching.cut(dict(zip(FLOW_OUTPUTS, token2wav.run_flow(batch))), feeds)
    for feed, got in zip(feeds, outputs):
        alone = dict(zip(FLOW_OUTPUTS, token2wav.run_flow(feed)))
        assert got["mel"].shape == alone["mel"].shape
        np.testing.assert_allclose(got["mel"], alone["mel"], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(got["mel_lens"], alone["mel_lens"])


def test_padded_vocoder_batch_cuts_back_to_each_request_alone(token2wav):
    feeds = [vocoder_feeds(token2wav, 1, 40), vocoder_feeds(token2wav, 2, 17), vocoder_feeds(token2wav, 3, 33)]
    batching = VocoderBatching(token2wav.config.hift.samples_per_frame)
    outputs = batching.cut(dict(zip(VOCODER_OUTPUTS, token2wav.run_vocoder(batching.pad(feeds)))), feeds)
    for feed, got in zip(feeds, outputs):
        alone = dict(zip(VOCODER_OUTPUTS, token2wav.run_vocoder(feed)))
        for name in VOCODER_OUTPUTS:
            assert got[name].shape == alone[name].shape, name
            np.testing.assert_allclose(got[name], alone[name], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("batching", [FlowBatching(), VocoderBatching(256)])
def test_equal_shapes_pad_to_a_plain_concatenation(token2wav, batching):
    if isinstance(batching, FlowBatching):
        feeds = [flow_feeds(token2wav, 4, 20, 8, 16), flow_feeds(token2wav, 5, 20, 8, 16)]
    else:
        feeds = [vocoder_feeds(token2wav, 4, 12), vocoder_feeds(token2wav, 5, 12)]
    batch = batching.pad(feeds)
    for name in feeds[0]:
        np.testing.assert_array_equal(batch[name], np.concatenate([f[name] for f in feeds]))
