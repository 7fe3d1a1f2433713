"""One request never fails another on the served decoders, and nothing hostile or non-finite gets through.

Live (gRPC: the HTTP port may refuse internal models): a bad flow_decoder request batched with good ones fails alone,
each hostile value from issue 10 is INVALID_ARG with the server still ready, NaN inputs are refused, a request above
the rendered caps is refused before any work. In-process (a fake ``triton_python_backend_utils``): the CPU ORT
backend's paths a validated live request cannot reach — a grouped ORT call that fails is re-run request by request,
a non-finite output fails its own request only, a validator that cannot load fails the model load.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from stepaudio.checkpoints import layout
from stepaudio.decoder.checkpoint import load_config
from stepaudio.decoder.token2wav import DecoderNoise, Token2WavBase, Token2WavRequest
from tests.decoder.inputs import make_tokens, make_voice
from tests.server.helpers import BatchCounts, grpc_input, write_smoke_onnx

BACKEND = Path(__file__).resolve().parents[2] / "backends" / "onnxruntime" / "model.py"


# -- live -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder(tiny_checkpoints):
    """The feeds builder for the served speech decoder's config."""
    builder = Token2WavBase()
    builder.config = load_config(tiny_checkpoints / layout.TTS_DIR / layout.SPEECH_DECODER_DIR)
    return builder


def flow_feeds(decoder, seed, n_tokens=40, n_prompt=12, n_frames=25):
    prompt_tokens, prompt_mel, speaker = make_voice(seed, n_prompt, n_frames)
    request = Token2WavRequest(make_tokens(seed, n_tokens), prompt_tokens, prompt_mel, speaker)
    request.validate(decoder.config)
    noise = DecoderNoise.from_seed(seed, n_frames, n_tokens, decoder.config).flow
    return decoder.flow_feeds([request], [noise])


def vocoder_feeds(decoder, seed, frames=60):
    mel = np.random.default_rng(seed).standard_normal((80, frames)).astype(np.float32) - 5.0
    noise = DecoderNoise.from_seed(seed, 0, 30, decoder.config)
    hop = decoder.config.hift.samples_per_frame
    return decoder.vocoder_feeds([mel], [noise.source_phase], [noise.source_noise[:, : frames * hop]])


def served_inputs(feeds):
    # The configs declare each *_lens as dims [1] per row.
    return [grpc_input(name, value[:, None] if name.endswith("_lens") else value) for name, value in feeds.items()]


def send(client, model, feeds, **options):
    return client.infer(model, served_inputs(feeds), **options)


def assert_invalid_arg(client, model, feeds, message):
    with pytest.raises(InferenceServerException) as info:
        send(client, model, feeds)
    assert "INVALID_ARG" in str(info.value.status()), info.value
    assert message in str(info.value)
    assert client.is_server_ready() and client.is_model_ready(model)


@pytest.mark.server
def test_a_bad_request_fails_alone_among_batched_good_ones(triton_server, grpc_client, decoder):
    good = [flow_feeds(decoder, seed) for seed in range(12)]
    alone = [send(grpc_client, "flow_decoder", feeds).as_numpy("mel") for feeds in good]
    bad = flow_feeds(decoder, 99)
    bad["tokens"][0, 7] = 5120  # same shapes as the good ones: the batcher may put it in their ORT call

    counts = BatchCounts(triton_server, "flow_decoder")
    answers: queue.Queue = queue.Queue()
    order = good[:6] + [bad] + good[6:]
    for index, feeds in enumerate(order):
        grpc_client.async_infer("flow_decoder", served_inputs(feeds), lambda result, error, i=index: answers.put((i, result, error)))
    results = dict((i, (result, error)) for i, result, error in (answers.get(timeout=120) for _ in order))

    result, error = results.pop(6)
    assert result is None and "INVALID_ARG" in str(error.status()) and "contains id 5120" in str(error)
    for i, (result, error) in sorted(results.items()):
        assert error is None, f"good request {i} failed: {error}"
        expected = alone[i if i < 6 else i - 1]
        np.testing.assert_allclose(result.as_numpy("mel"), expected, atol=1e-4)
    inferences, executions = counts.settle(12)
    assert inferences >= 12
    assert executions < inferences, "the concurrent requests were not batched, so isolation was not exercised"


HOSTILE_FLOW = {
    "id -1": (("tokens", (0, 0), -1), "contains id -1"),
    "id -5120": (("tokens", (0, 3), -5120), "contains id -5120"),
    "id 5120": (("tokens", (0, 39), 5120), "contains id 5120"),
    "prompt id 5120": (("prompt_tokens", (0, 0), 5120), "prompt_tokens contains id 5120"),
    "token_lens -5": (("token_lens", 0, -5), "token_lens -5 is out of range"),
    "token_lens 1e12": (("token_lens", 0, 10**12), "token_lens 1000000000000 is out of range"),
    "token_lens 2^62": (("token_lens", 0, 2**62), f"token_lens {2**62} is out of range"),
    "prompt_mel_lens 1e9": (("prompt_mel_lens", 0, 10**9), "prompt_mel_lens 1000000000 is out of range"),
    "NaN speaker embedding": (("speaker_embedding", (0, 0), np.nan), "speaker_embedding must be finite"),
    "NaN prompt mel": (("prompt_mel", (0, 4, 2), np.nan), "prompt_mel must be finite"),
    "inf noise": (("noise", (0, 1, 1), np.inf), "noise must be finite"),
}


@pytest.mark.server
def test_noise_shorter_than_the_prompt_is_invalid_arg(grpc_client, decoder):
    feeds = flow_feeds(decoder, 6)
    feeds["noise"] = feeds["noise"][:, :, :20].copy()  # the prompt mel alone has 25 frames
    assert_invalid_arg(grpc_client, "flow_decoder", feeds, "noise has 20 frames")


HOSTILE_VOCODER = {
    "NaN mel": (("mel", (0, 0, 5), np.nan), "mel must be finite"),
    "NaN source phase": (("source_phase", (0, 3), np.nan), "source_phase must be finite"),
    "inf source noise": (("source_noise", (0, 2, 7), -np.inf), "source_noise must be finite"),
    "mel_lens 0": (("mel_lens", 0, 0), "mel_lens 0 is out of range"),
    "mel_lens 2^62": (("mel_lens", 0, 2**62), f"mel_lens {2**62} is out of range"),
}


HOSTILE = [("flow_decoder", name, *case) for name, case in HOSTILE_FLOW.items()] + [
    ("vocoder", name, *case) for name, case in HOSTILE_VOCODER.items()
]


@pytest.mark.server
@pytest.mark.parametrize("model, case, change, message", HOSTILE, ids=[f"{m}: {c}" for m, c, *_ in HOSTILE])
def test_hostile_values_are_invalid_arg(grpc_client, decoder, model, case, change, message):
    feeds = flow_feeds(decoder, 5) if model == "flow_decoder" else vocoder_feeds(decoder, 3)
    name, index, value = change
    feeds[name][index] = value
    assert_invalid_arg(grpc_client, model, feeds, message)


def _served_cap(client, server, model, key):
    config = client.get_model_config(model, as_json=True, headers=server.grpc_admin_headers)  # an admin API
    return int(config["config"]["parameters"][key]["string_value"])


@pytest.mark.server
def test_requests_above_the_caps_are_refused_before_any_work(grpc_client, triton_server, decoder):
    # At the cap the tiny flow would run for minutes: a refusal inside the client deadline means no work was done.
    max_tokens = _served_cap(grpc_client, triton_server, "flow_decoder", "max_tokens")
    feeds = flow_feeds(decoder, 7, n_tokens=8)
    feeds["tokens"] = np.zeros((1, max_tokens + 1 - feeds["prompt_tokens"].shape[1]), np.int64)
    feeds["token_lens"] = np.array([feeds["tokens"].shape[1]], np.int64)
    with pytest.raises(InferenceServerException) as info:
        send(grpc_client, "flow_decoder", feeds, client_timeout=20)
    assert "INVALID_ARG" in str(info.value.status()) and f"exceeds the limit of {max_tokens}" in str(info.value)

    max_frames = _served_cap(grpc_client, triton_server, "vocoder", "max_mel_frames")
    feeds = vocoder_feeds(decoder, 4, frames=max_frames + 1)
    with pytest.raises(InferenceServerException) as info:
        send(grpc_client, "vocoder", feeds, client_timeout=20)
    assert "INVALID_ARG" in str(info.value.status()) and f"exceeds the limit of {max_frames}" in str(info.value)
    assert grpc_client.is_server_ready()


@pytest.mark.server
def test_decoders_are_internal_in_both_configurations(grpc_client, triton_server, model_repository):
    for model in ("flow_decoder", "vocoder", "flow_decoder_music", "vocoder_music"):
        served = grpc_client.get_model_config(model, as_json=True, headers=triton_server.grpc_admin_headers)
        served = served["config"]["parameters"]
        assert served["access"]["string_value"] == "internal", model
        assert "internal" in (model_repository / model / "config.pbtxt").read_text().split('key: "access"')[1][:60]


# -- in-process: the backend with a fake triton_python_backend_utils -------------------------------------------------
@dataclass
class FakeTensor:
    _name: str
    value: np.ndarray

    def as_numpy(self):
        return self.value


class FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t._name: t.value for t in output_tensors or []}
        self.error = error


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code):
        self.message, self.code = message, code


class FakeModelException(Exception):
    pass


def reject_negative_gain(parameters):
    """A feed validator factory for the smoke model: gain must be ≥ 0."""
    def check(feeds):
        if np.any(feeds["gain"] < 0):
            raise ValueError("gain must be ≥ 0")
    return check


@pytest.fixture
def backend(monkeypatch, tmp_path):
    """(make model from extra parameters, logged errors) for the smoke ONNX graph y = 3x·gain + 1."""
    logged = []
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.InferenceResponse, fake.TritonError = FakeTensor, FakeResponse, FakeError
    fake.TritonModelException = FakeModelException
    fake.get_input_tensor_by_name = lambda request, name: FakeTensor(name, request[name]) if name in request else None
    fake.triton_string_to_numpy = {"TYPE_FP32": np.float32}.__getitem__
    fake.Logger = types.SimpleNamespace(log_error=logged.append, log_info=logged.append)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("ort_backend_under_test", BACKEND)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    write_smoke_onnx(tmp_path / "1" / "model.onnx")

    def make(**parameters):
        config = {
            "name": "smoke_onnx", "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]},
                      {"name": "gain", "data_type": "TYPE_FP32", "dims": ["1"], "reshape": {"shape": []}}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": ["4"]},
                       {"name": "total", "data_type": "TYPE_FP32", "dims": ["1"], "reshape": {"shape": []}}],
            "parameters": {k: {"string_value": v} for k, v in parameters.items()},
        }
        model = module.TritonPythonModel()
        model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"})
        return model

    return make, logged


def smoke_request(x0, gain=1.0):
    return {"x": np.full((1, 4), x0, np.float32), "gain": np.full((1, 1), gain, np.float32)}


def test_a_failing_grouped_call_is_rerun_so_only_the_culprit_fails(backend):
    make, logged = backend
    model = make()
    real_run = model.session.run

    def run(outputs, feeds, options):  # an ORT fault that only request x = 666 triggers
        if np.any(feeds["x"] == 666):
            raise RuntimeError("simulated onnxruntime fault")
        return real_run(outputs, feeds, options)

    model.session = types.SimpleNamespace(run=run)
    responses = model.execute([smoke_request(1), smoke_request(666), smoke_request(2, 2.0)])
    assert responses[1].error.code == "INTERNAL" and "simulated onnxruntime fault" in responses[1].error.message
    np.testing.assert_allclose(responses[0].outputs["y"], 3 * 1 + 1)
    np.testing.assert_allclose(responses[2].outputs["y"], 3 * 2 * 2 + 1)
    assert responses[0].error is None and responses[2].error is None
    assert any("Traceback" in line and "simulated onnxruntime fault" in line for line in logged)


def test_a_non_finite_output_fails_its_own_request_only(backend):
    make, logged = backend
    responses = make().execute([smoke_request(1), smoke_request(np.inf, 0.0), smoke_request(3)])  # inf·0 = NaN
    assert responses[1].error.code == "INTERNAL" and "NaN or infinity" in responses[1].error.message
    np.testing.assert_allclose(responses[0].outputs["y"], 4)
    np.testing.assert_allclose(responses[2].outputs["total"], [[40]])  # 4 × (3·3 + 1), back to dims [1]
    assert any("NaN or infinity" in line for line in logged)


def test_the_validator_rejects_its_request_alone(backend):
    make, _ = backend
    model = make(feed_validator="tests.server.test_decoder_isolation:reject_negative_gain")
    responses = model.execute([smoke_request(1), smoke_request(1, -1.0), smoke_request(2)])
    assert responses[1].error.code == "INVALID_ARG" and "gain must be ≥ 0" in responses[1].error.message
    assert responses[0].error is None and responses[2].error is None
    np.testing.assert_allclose(responses[2].outputs["y"], 7)


def test_a_validator_that_cannot_load_fails_the_model_load(backend):
    make, _ = backend
    with pytest.raises(FakeModelException, match="feed_validator"):
        make(feed_validator="tests.server.test_decoder_isolation:no_such_factory")
    with pytest.raises(FakeModelException, match="decoder_dir"):
        make(feed_validator="stepaudio.decoder.token2wav:flow_feed_validator", max_tokens="10", max_mel_frames="10")


def test_arena_parameters_reach_onnxruntime(backend):
    make, _ = backend
    assert make().session.get_session_options().enable_cpu_mem_arena
    assert not make(enable_mem_arena="0").session.get_session_options().enable_cpu_mem_arena
    model = make(**{"memory.enable_memory_arena_shrinkage": "cpu:0"})
    assert model.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    np.testing.assert_allclose(model.execute([smoke_request(1)])[0].outputs["y"], 4)


class SmokeSession:
    """What a ``session_factory`` returns, computing the smoke graph (y = 3x·gain + 1, total = Σy) in numpy; x = 666
    raises, as a faulty runtime would."""

    def __init__(self, parameters):
        self.parameters, self.calls = parameters, 0

    def get_inputs(self):
        return [types.SimpleNamespace(name=name) for name in ("x", "gain")]

    def run(self, output_names, feeds, run_options):
        self.calls += 1
        if np.any(feeds["x"] == 666):
            raise RuntimeError("simulated session fault")
        with np.errstate(invalid="ignore"):  # inf·0 = NaN, the output check's case
            y = 3 * feeds["x"] * feeds["gain"][:, None] + 1
        return [{"y": y, "total": y.sum(axis=1)}[name] for name in output_names]


def smoke_session(parameters):
    return SmokeSession(parameters)


def no_gain_session(parameters):
    session = SmokeSession(parameters)
    session.get_inputs = lambda: [types.SimpleNamespace(name="x")]
    return session


SMOKE_SESSION = "tests.server.test_decoder_isolation:smoke_session"


def test_a_session_factory_replaces_onnxruntime_and_keeps_the_isolation(backend, tmp_path):
    make, logged = backend
    (tmp_path / "1" / "model.onnx").write_bytes(b"not an onnx file: a session factory never reads it")
    model = make(session_factory=SMOKE_SESSION, feed_validator="tests.server.test_decoder_isolation:reject_negative_gain",
                 intra_op_thread_count="3")
    assert isinstance(model.session, SmokeSession) and model.session.parameters["intra_op_thread_count"] == "3"
    responses = model.execute([smoke_request(1), smoke_request(666), smoke_request(2, -1.0), smoke_request(np.inf, 0.0),
                               smoke_request(2, 2.0)])
    assert responses[1].error.code == "INTERNAL" and "simulated session fault" in responses[1].error.message
    assert SMOKE_SESSION in responses[1].error.message  # named for the session, not onnxruntime
    assert responses[2].error.code == "INVALID_ARG" and "gain must be ≥ 0" in responses[2].error.message
    assert responses[3].error.code == "INTERNAL" and "NaN or infinity" in responses[3].error.message
    np.testing.assert_allclose(responses[0].outputs["y"], [[4] * 4])
    np.testing.assert_allclose(responses[4].outputs["total"], [[52]])  # back to dims [1]
    assert responses[0].error is None and responses[4].error is None
    assert model.session.calls == 5  # one batch of four, then each again alone (the validator kept one out)
    assert any("Traceback" in line and "simulated session fault" in line for line in logged)


def test_a_session_factory_that_fails_or_lacks_inputs_fails_the_model_load(backend):
    make, _ = backend
    with pytest.raises(FakeModelException, match="session_factory"):
        make(session_factory="tests.server.test_decoder_isolation:no_such_factory")
    with pytest.raises(FakeModelException, match=r"\['gain'\] are not inputs of tests.server.test_decoder_isolation:no_gain"):
        make(session_factory="tests.server.test_decoder_isolation:no_gain_session")
    with pytest.raises(FakeModelException, match="unsupported flow dtype 'float16'"):
        make(session_factory="stepaudio.decoder.torch_session:flow_session", decoder_dir="/nowhere", flow_dtype="float16")
