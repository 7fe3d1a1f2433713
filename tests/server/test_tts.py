"""TTS serving against the live server on tiny checkpoints: ensemble_tts, cloning, presets, music routing,
streaming (parity, cancellation, sequential and concurrent load), batching in flow_decoder / vocoder, bad input."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from stepaudio.decoder.token2wav import mel_frames_for_tokens
from stepaudio.testing.voices import synthetic_voice
from tests.server.helpers import BatchCounts, grpc_input, http_input

pytestmark = pytest.mark.server
TOKENS = 40  # generated audio ids per test request (tiny random weights rarely sample the stop id)


def _s(text: str) -> np.ndarray:
    return np.array([text.encode()], dtype=np.object_)


def tts_inputs(text="你好，世界。", speaker="Tingting", seed=11, batched=True, **extra):
    tensors = {"TEXT": _s(text), "SEED": np.array([seed], np.int64), "MAX_NEW_TOKENS": np.array([TOKENS], np.int32)}
    if speaker is not None:
        tensors["SPEAKER"] = _s(speaker)
    tensors.update(extra)
    return {k: (v[None] if batched else v) for k, v in tensors.items()}


def infer(client, model, tensors, make_input=http_input):
    result = client.infer(model, [make_input(k, v) for k, v in tensors.items()])
    return {name: result.as_numpy(name) for name in ("WAVEFORM", "SAMPLE_RATE", "AUDIO_IDS")}


def stream(grpc_client, tensors, cancel_after=None):
    """(chunks, error) from tts_stream; cancels the stream after ``cancel_after`` chunks when given."""
    responses: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: responses.put((result, error)))
    chunks, finished = [], False
    try:
        grpc_client.async_stream_infer("tts_stream", [grpc_input(k, v) for k, v in tensors.items()],
                                       enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                return chunks, error
            if result.as_numpy("WAVEFORM") is not None:
                chunks.append(result.as_numpy("WAVEFORM"))
            finished = result.get_response().parameters["triton_final_response"].bool_param
            if cancel_after is not None and len(chunks) >= cancel_after and not finished:
                return chunks, None
            if finished:
                return chunks, None
    finally:
        # A finished call is closed, not cancelled (compat.py: in_band_grpc_cancel); cancelling is the test's choice.
        grpc_client.stop_stream(cancel_requests=not finished)


def test_ensemble_tts_audio_length_matches_the_generated_tokens(http_client):
    out = infer(http_client, "ensemble_tts", tts_inputs())
    ids = out["AUDIO_IDS"].reshape(-1)
    assert ids.size == TOKENS and np.all((ids >= 65536) & (ids < 70656))
    wave = out["WAVEFORM"].reshape(-1)
    assert int(out["SAMPLE_RATE"].reshape(-1)[0]) == 22050
    assert wave.size == 256 * mel_frames_for_tokens(TOKENS)
    assert np.all(np.isfinite(wave)) and np.abs(wave).max() <= 0.99 + 1e-6 and np.abs(wave).max() > 0


def test_same_seed_same_audio_other_seed_other_audio(http_client):
    a = infer(http_client, "ensemble_tts", tts_inputs(seed=5))["WAVEFORM"]
    b = infer(http_client, "ensemble_tts", tts_inputs(seed=5))["WAVEFORM"]
    c = infer(http_client, "ensemble_tts", tts_inputs(seed=6))["AUDIO_IDS"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(c, infer(http_client, "ensemble_tts", tts_inputs(seed=5))["AUDIO_IDS"])


def test_voice_cloning_from_8khz_prompt_audio(grpc_client):
    prompt = synthetic_voice(1.5, seed=3, sample_rate=8000)
    tensors = tts_inputs(speaker=None, PROMPT_AUDIO=prompt, PROMPT_SAMPLE_RATE=np.array([8000], np.int32),
                         PROMPT_TEXT=_s("提示音频的文本"))
    out = infer(grpc_client, "ensemble_tts", tensors, grpc_input)
    assert out["WAVEFORM"].size == 256 * mel_frames_for_tokens(TOKENS)


def test_music_tags_route_to_the_music_decoder(http_client, grpc_client):
    text = "（RAP）我们一起唱"
    music = infer(http_client, "ensemble_tts_music", tts_inputs(text=text))
    assert music["WAVEFORM"].size == 256 * mel_frames_for_tokens(TOKENS)
    with pytest.raises(InferenceServerException, match="ensemble_tts_music"):
        infer(http_client, "ensemble_tts", tts_inputs(text=text))
    with pytest.raises(InferenceServerException, match="ensemble_tts"):
        infer(http_client, "ensemble_tts_music", tts_inputs(text="普通的话"))
    chunks, error = stream(grpc_client, tts_inputs(text=text, batched=False))
    assert error is None and sum(c.size for c in chunks) == music["WAVEFORM"].size


@pytest.mark.parametrize("overrides, message", [
    ({"TEXT": ""}, "text is empty"),
    ({"TEXT": "字" * 1001}, "limit is 1000"),
    ({"TEXT": "(开心)你好"}, "unknown style tag"),
    ({"SPEAKER": "Nobody"}, "unknown speaker 'Nobody'"),
    ({"TEMPERATURE": np.array([-1.0], np.float32)}, "temperature"),
    ({"TOP_P": np.array([0.0], np.float32)}, "top_p"),
    ({"TOP_K": np.array([-3], np.int32)}, "top_k"),
    ({"MAX_NEW_TOKENS": np.array([0], np.int32)}, "max_new_tokens"),
    ({"SPEAKER": None, "PROMPT_AUDIO": np.zeros(0, np.float32), "PROMPT_SAMPLE_RATE": np.array([16000], np.int32),
      "PROMPT_TEXT": "x"}, "empty"),
    ({"SPEAKER": None, "PROMPT_AUDIO": np.full(1600, np.nan, np.float32), "PROMPT_SAMPLE_RATE": np.array([16000], np.int32),
      "PROMPT_TEXT": "x"}, "NaN"),
    ({"SPEAKER": None, "PROMPT_AUDIO": np.zeros(8000 * 31, np.float32), "PROMPT_SAMPLE_RATE": np.array([8000], np.int32),
      "PROMPT_TEXT": "x"}, "30"),
    ({"SPEAKER": None, "PROMPT_AUDIO": np.zeros(1600, np.float32), "PROMPT_SAMPLE_RATE": np.array([0], np.int32),
      "PROMPT_TEXT": "x"}, "sample rate"),
    ({"SPEAKER": None, "PROMPT_AUDIO": np.zeros(1600, np.float32), "PROMPT_SAMPLE_RATE": np.array([16000], np.int32)},
     "transcript"),
])
def test_bad_input_is_invalid_arg_and_server_stays_ready(http_client, overrides, message):
    tensors = tts_inputs()
    for name, value in overrides.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = (_s(value) if isinstance(value, str) else value)[None]
    with pytest.raises(InferenceServerException) as info:
        infer(http_client, "ensemble_tts", tensors)
    assert message in str(info.value)
    assert "INVALID_ARG" in str(info.value.status()) or info.value.status() == "400"
    assert http_client.is_server_ready()


def test_stream_joins_to_the_offline_audio(http_client, grpc_client):
    longer = {"MAX_NEW_TOKENS": np.array([120], np.int32)}  # first chunk after 25 + 20 lookahead ids, then 50, ...
    offline = infer(http_client, "ensemble_tts", tts_inputs(seed=21, **longer))["WAVEFORM"].reshape(-1)
    chunks, error = stream(grpc_client, tts_inputs(seed=21, batched=False, **longer))
    assert error is None
    assert len(chunks) >= 2, "audio must arrive in several chunks while the LLM generates"
    joined = np.concatenate(chunks)
    assert joined.size == offline.size
    # Same tokens and noise; the stream differs only by the flow's windowing (bound stated in the README).
    snr = 10 * np.log10(np.sum(offline**2) / max(np.sum((joined - offline) ** 2), 1e-20))
    assert snr > 10.0, f"stream vs offline SNR {snr:.1f} dB"


def test_cancel_mid_stream_then_twenty_streams_work(triton_server, http_client, grpc_client):
    abandoned_before = triton_server.log_path.read_text().count("request abandoned")
    chunks, error = stream(grpc_client, tts_inputs(batched=False, MAX_NEW_TOKENS=np.array([400], np.int32)), cancel_after=1)
    assert error is None and len(chunks) == 1
    for i in range(20):
        seed = 100 + i
        chunks, error = stream(grpc_client, tts_inputs(seed=seed, batched=False))
        assert error is None
        # Same seed offline: the stream must carry all of its audio (some seeds sample the stop id early).
        offline_ids = infer(http_client, "ensemble_tts", tts_inputs(seed=seed))["AUDIO_IDS"]
        assert sum(c.size for c in chunks) == 256 * mel_frames_for_tokens(offline_ids.size), f"stream {i}"
    # The cancelled stream's tts_llm stream ended when tts_stream cancelled it: tts_stream did not have to abandon
    # it after bls_stall_timeout_s (30 s in the tests; the twenty streams usually take longer than that).
    assert triton_server.log_path.read_text().count("request abandoned") == abandoned_before


def test_fifty_sequential_streams(triton_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        sizes = [sum(c.size for c in stream(client, tts_inputs(seed=i, batched=False))[0]) for i in range(50)]
    finally:
        client.close()
    assert sizes == [256 * mel_frames_for_tokens(TOKENS)] * 50


def test_eight_concurrent_streams(triton_server):
    import tritonclient.grpc as grpcclient

    def one(i):
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        try:
            return stream(client, tts_inputs(seed=200 + i, batched=False))
        finally:
            client.close()

    flow_calls = BatchCounts(triton_server, "flow_decoder")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for chunks, error in results:
        assert error is None and sum(c.size for c in chunks) == 256 * mel_frames_for_tokens(TOKENS)
    inferences, _ = flow_calls.settle(8)
    assert inferences >= 8, "the streams' flow windows did not run on the served flow_decoder"


def test_concurrent_requests_batch_in_flow_decoder_and_vocoder(triton_server):
    import tritonclient.grpc as grpcclient

    counts = {m: BatchCounts(triton_server, m) for m in ("flow_decoder", "vocoder")}
    barrier = threading.Barrier(8)

    def one(_):
        c = grpcclient.InferenceServerClient(triton_server.grpc_url)
        try:
            barrier.wait()
            return infer(c, "ensemble_tts", tts_inputs(seed=77), grpc_input)["WAVEFORM"]
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        waves = list(pool.map(one, range(8)))
    for wave in waves[1:]:
        np.testing.assert_allclose(wave, waves[0], atol=1e-4)  # batching must not change a request's result
    for model, model_counts in counts.items():
        inferences, executions = model_counts.settle(8)
        assert inferences == 8
        assert executions < 8, f"{model} did not batch concurrent requests"
