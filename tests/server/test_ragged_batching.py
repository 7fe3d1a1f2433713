"""Ragged dynamic batching on the served decoders: concurrent requests of different lengths share flow_decoder /
vocoder executions (Triton's statistics: executions < inferences) and each gets what it gets when sent alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.server.helpers import BatchCounts, grpc_input
from tests.server.test_decoder_isolation import decoder, flow_feeds, send, vocoder_feeds  # noqa: F401 (fixture)
from tests.server.test_tts import infer, tts_inputs

pytestmark = pytest.mark.server
OUTPUTS = {"flow_decoder": ("mel", "mel_lens"), "vocoder": ("wave", "wave_lens", "f0")}


def concurrently(triton_server, job, n):
    """``job(client, i)`` for i < n, released together from n threads, each with its own gRPC client."""
    import tritonclient.grpc as grpcclient

    barrier = threading.Barrier(n)

    def one(i):
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        try:
            barrier.wait()
            return job(client, i)
        finally:
            client.close()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("model", ["flow_decoder", "vocoder"])
def test_mixed_lengths_batch_and_equal_unbatched_runs(triton_server, grpc_client, decoder, model):  # noqa: F811
    # Lengths within one bucket (longest ≤ 1.5 × shortest), all different; the prompts differ as well for the flow.
    if model == "flow_decoder":
        feeds = [flow_feeds(decoder, 30 + i, n_tokens=30 + 3 * i, n_prompt=10 + i, n_frames=20 + 2 * i) for i in range(6)]
    else:
        feeds = [vocoder_feeds(decoder, 30 + i, frames=40 + 3 * i) for i in range(6)]

    def run(client, i):
        result = send(client, model, feeds[i])
        return {name: result.as_numpy(name) for name in OUTPUTS[model]}

    counts = BatchCounts(triton_server, model)
    together = concurrently(triton_server, run, len(feeds))
    inferences, executions = counts.settle(len(feeds))
    assert inferences == len(feeds)
    assert executions < inferences, f"{model}: requests of different lengths did not share an execution"
    for i, got in enumerate(together):
        alone = run(grpc_client, i)
        for name in OUTPUTS[model]:
            assert got[name].shape == alone[name].shape, (i, name)
            np.testing.assert_allclose(got[name], alone[name], atol=1e-4, rtol=0, err_msg=f"request {i} {name}")


def test_ensemble_requests_of_different_lengths_batch_in_the_decoders(triton_server, http_client):
    lengths = [30, 33, 36, 40]
    counts = {m: BatchCounts(triton_server, m) for m in OUTPUTS}

    def run(client, i):
        tensors = tts_inputs(seed=90 + i, MAX_NEW_TOKENS=np.array([lengths[i]], np.int32))
        return infer(client, "ensemble_tts", tensors, grpc_input)

    together = concurrently(triton_server, run, len(lengths))
    for model, model_counts in counts.items():
        inferences, executions = model_counts.settle(len(lengths))
        assert inferences == len(lengths)
        assert executions < inferences, f"{model} did not batch the ensemble's requests"
    for i, got in enumerate(together):
        tensors = tts_inputs(seed=90 + i, MAX_NEW_TOKENS=np.array([lengths[i]], np.int32))
        alone = infer(http_client, "ensemble_tts", tensors)
        np.testing.assert_array_equal(got["AUDIO_IDS"], alone["AUDIO_IDS"])
        assert got["WAVEFORM"].shape == alone["WAVEFORM"].shape
        np.testing.assert_allclose(got["WAVEFORM"], alone["WAVEFORM"], atol=1e-4, rtol=0)
