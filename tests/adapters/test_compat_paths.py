"""The adapters on both sides of ``stepaudio_contract/compat.py``: the server version the config was rendered for
(``triton_version``) decides whether a stub takes the workaround or the native path."""

from __future__ import annotations

import importlib
import json
import sys
import time
import types

import numpy as np
import pytest

from tests.adapters.test_adapter import FakeTensor, adapter  # noqa: F401 - the fake pb_utils fixture

OLD, FIXED = "2.51", "2.58"  # FIXED: every workaround with a known fix is fixed there


def _serve_on(adapter, version: str | None):  # noqa: F811 - the fixture's module
    parameters = {} if version is None else {"triton_version": {"string_value": version}}
    adapter.parse_config({"model_config": json.dumps({"parameters": parameters})})


@pytest.fixture
def bls_module(adapter, monkeypatch):  # noqa: F811
    sys.modules.pop("stepaudio_triton.bls", None)
    module = importlib.import_module("stepaudio_triton.bls")
    yield module
    sys.modules.pop("stepaudio_triton.bls", None)


@pytest.mark.parametrize("version, needed", [(None, True), (OLD, True), ("2.57", True), (FIXED, False), ("3.0", False)])
def test_parse_config_reads_the_rendered_server_version(adapter, version, needed):  # noqa: F811
    _serve_on(adapter, version)
    assert adapter.triton.version == (version or OLD)
    assert adapter.triton.error_output is needed and adapter.triton.cancel_input is needed
    assert adapter.triton.retired_iterators is (version in (None, OLD))
    assert adapter.triton.needs("tagged_error_codes"), "no upstream fix known: needed on every version"


class _Named:
    def __init__(self, name, value=None):
        self._name, self.value = name, value

    def name(self):
        return self._name


class _Sender:
    def __init__(self):
        self.sent = []

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))


def _request(request_id: str, wanted=("OUTPUT_IDS",)):
    return types.SimpleNamespace(request_id=lambda: request_id, parameters=lambda: "{}",
                                 requested_output_names=lambda: list(wanted))


@pytest.mark.parametrize("version", [OLD, FIXED])
def test_a_bls_callers_stream_error_is_an_output_only_where_the_server_would_lose_it(adapter, monkeypatch, version):  # noqa: F811
    monkeypatch.setattr(adapter.pb_utils, "TRITONSERVER_RESPONSE_COMPLETE_FINAL", 1, raising=False)
    monkeypatch.setattr(adapter.pb_utils, "Tensor", _Named)
    _serve_on(adapter, version)
    sender = _Sender()
    adapter.send_error(sender, _request("stepaudio-bls-" + "a" * 32, ("OUTPUT_IDS", "ERROR")), ValueError("bad ids"))
    (response, flags), = sender.sent
    assert flags == 1
    if version == OLD:
        assert response.error is None and [t.value[0].decode() for t in response.output_tensors] == ["[INVALID_ARG] bad ids"]
    else:  # a plain error response, still tagged (BLS errors arrive as INTERNAL on every version)
        assert response.error.code == "INVALID_ARG" and response.error.message == "[INVALID_ARG] bad ids"


@pytest.mark.parametrize("version, sent", [(OLD, ["WAVEFORM"]), (FIXED, ["WAVEFORM", "SAMPLE_RATE"])])
def test_unrequested_outputs_are_left_out_only_where_the_sender_drops_them_without_the_gil(adapter, monkeypatch,  # noqa: F811
                                                                                          version, sent):
    monkeypatch.setattr(adapter.pb_utils, "TRITONSERVER_RESPONSE_COMPLETE_FINAL", 1, raising=False)
    _serve_on(adapter, version)
    sender = _Sender()
    adapter.send(sender, _request("client", ("WAVEFORM",)), [_Named("WAVEFORM"), _Named("SAMPLE_RATE")])
    assert [t.name() for t in sender.sent[0][0].output_tensors] == sent


class _Responses:
    """A decoupled BLS response iterator with the native ``cancel()`` of a fixed server."""

    def __init__(self, count):
        self.left, self.cancel_calls = count, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.left == 0:
            raise StopIteration
        time.sleep(0.005)  # one decode step
        self.left -= 1
        return types.SimpleNamespace(has_error=lambda: False, output_tensors=lambda: [], tensor=lambda name: None)

    def cancel(self):
        self.cancel_calls += 1
        self.left = min(self.left, 1)  # the called model ends the stream at its next step


def _recording_requests(monkeypatch, bls):
    made = []

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            self.inputs = {t.name: t.value for t in inputs}
            self.outputs, self.request_id = requested_output_names, request_id
            made.append(self)

        def exec(self, decoupled):
            self.responses = _Responses(0 if "CANCEL" in self.inputs else 1000)
            return self.responses

    monkeypatch.setattr(bls.pb_utils, "InferenceRequest", Request, raising=False)
    return made


def test_on_a_fixed_server_a_bls_stream_is_cancelled_through_its_iterator(adapter, bls_module, monkeypatch):  # noqa: F811
    _serve_on(adapter, FIXED)
    made = _recording_requests(monkeypatch, bls_module)
    stream = bls_module.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"], cancellable=True)
    stream.cancel()
    (request,) = made  # no CANCEL request
    assert request.outputs == ["OUTPUT_IDS"], "no ERROR output is declared there"
    assert stream.cancel_token is None and request.responses.cancel_calls == 1
    assert request.request_id.startswith("stepaudio-bls-"), "the id still asks for tagged error codes"
    assert stream._ended and request.responses.left == 0, "cancel waits for the stream's final response"
    assert len(bls_module.retired) == 0, "iterators are not kept where the GIL defect is fixed"


def test_on_2_51_a_bls_stream_is_cancelled_by_a_cancel_request(adapter, bls_module, monkeypatch):  # noqa: F811
    _serve_on(adapter, OLD)
    made = _recording_requests(monkeypatch, bls_module)
    stream = bls_module.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"], cancellable=True)
    stream.request_cancel()
    first, cancel = made
    assert first.outputs == ["OUTPUT_IDS", "ERROR"] and first.responses.cancel_calls == 0
    assert first.request_id == "stepaudio-bls-" + stream.cancel_token
    assert cancel.inputs["CANCEL"].tolist() == [stream.cancel_token.encode()]
    assert len(bls_module.retired) >= 1, "the CANCEL's finished iterator is kept"
    first.responses.left = 0  # the fake model ends the stream


def test_on_a_fixed_server_the_llm_models_take_no_cancel_requests(adapter, monkeypatch):  # noqa: F811
    sys.modules.pop("stepaudio_triton.generation", None)
    generation = importlib.import_module("stepaudio_triton.generation")
    token = "b" * 32
    request = types.SimpleNamespace(request_id=lambda: "stepaudio-bls-" + token, parameters=lambda: "{}",
                                    **{"CANCEL": None})
    cancel = {"CANCEL": FakeTensor("CANCEL", np.array([token.encode()], object))}
    try:
        _serve_on(adapter, OLD)
        assert generation.cancel_token(request) == token
        _serve_on(adapter, FIXED)
        assert generation.cancel_token(request) is None
        assert generation.answer_cancel(cancel, generation.LiveStreams()) is False
    finally:
        sys.modules.pop("stepaudio_triton.generation", None)
