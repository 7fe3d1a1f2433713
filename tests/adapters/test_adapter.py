"""Adapter helpers with a fake ``triton_python_backend_utils`` (pure logic; the live server tests cover the rest)."""

from __future__ import annotations

import importlib
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class FakeTensor:
    name: str
    value: np.ndarray

    def as_numpy(self):
        return self.value


@dataclass
class FakeResponse:
    output_tensors: list | None = None
    error: object = None


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code):
        self.message, self.code = message, code


@pytest.fixture
def adapter(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = FakeTensor
    fake.InferenceResponse = FakeResponse
    fake.TritonError = FakeError
    fake.get_input_tensor_by_name = lambda request, name: request.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    sys.modules.pop("stepaudio_triton.adapter", None)
    module = importlib.import_module("stepaudio_triton.adapter")
    yield module
    sys.modules.pop("stepaudio_triton.adapter", None)


def test_parameters_treat_unfilled_placeholders_as_unset(adapter):
    config = {"parameters": {"a": {"string_value": "${a}"}, "b": {"string_value": "7"}, "c": {"string_value": "yes"}}}
    assert adapter.parameter(config, "a", 3, int) == 3
    assert adapter.parameter(config, "b", 3, int) == 7
    assert adapter.parameter(config, "c", False, bool) is True
    assert adapter.parameter(config, "missing", "x") == "x"


def test_string_and_scalar_inputs(adapter):
    request = {"TEXT": FakeTensor("TEXT", np.array([["你好".encode()]], dtype=object)),
               "N": FakeTensor("N", np.array([3], np.int32)),
               "BAD": FakeTensor("BAD", np.array([b"\xff"], dtype=object)),
               "TWO": FakeTensor("TWO", np.array([1, 2]))}
    assert adapter.optional_string(request, "TEXT") == "你好"
    assert adapter.optional_scalar(request, "N", int) == 3
    assert adapter.optional_string(request, "ABSENT") is None
    with pytest.raises(ValueError, match="not valid UTF-8"):
        adapter.optional_string(request, "BAD")
    with pytest.raises(ValueError, match="one value"):
        adapter.optional_scalar(request, "TWO", int)
    with pytest.raises(ValueError, match="required"):
        adapter.required_input(request, "ABSENT")


@pytest.mark.parametrize("pool", [None, ThreadPoolExecutor(2)])
def test_a_failing_request_does_not_fail_its_batch(adapter, pool):
    def handle(request):
        if request == "bad":
            raise ValueError("bad request")
        if request == "boom":
            raise RuntimeError("bug")
        return [request]

    ok, bad, boom = adapter.respond_each(["ok", "bad", "boom"], handle, pool)
    assert ok.output_tensors == ["ok"]
    assert (bad.error.code, bad.error.message) == ("INVALID_ARG", "bad request")
    assert boom.error.code == "INTERNAL" and "RuntimeError: bug" in boom.error.message


class FakeBlsResponse:
    def __init__(self, code, message):
        self._error = types.SimpleNamespace(code=lambda: code, message=lambda: message)

    def has_error(self):
        return True

    def error(self):
        return self._error


def test_bls_errors_keep_bad_input_as_value_error(adapter, monkeypatch):
    sys.modules.pop("stepaudio_triton.bls", None)
    bls = importlib.import_module("stepaudio_triton.bls")
    with pytest.raises(ValueError, match="text is empty"):
        bls.raise_if_error(FakeBlsResponse("INVALID_ARG", "text is empty"), "m")
    # BLS responses arrive as INTERNAL whatever the model sent: the message format decides.
    with pytest.raises(ValueError, match="text is empty"):
        bls.raise_if_error(FakeBlsResponse("INTERNAL", "text is empty"), "m")
    with pytest.raises(RuntimeError, match="m: KeyError: 'x'"):
        bls.raise_if_error(FakeBlsResponse("INTERNAL", "KeyError: 'x'"), "m")
    sys.modules.pop("stepaudio_triton.bls", None)


def test_a_cancel_that_overtakes_its_stream_still_cancels_it(adapter):
    from stepaudio.llm.engine import TokenStream

    sys.modules.pop("stepaudio_triton.generation", None)
    generation = importlib.import_module("stepaudio_triton.generation")
    live = generation.LiveStreams(remembered_cancels=2)
    running = TokenStream("a")
    live.add("a", running)
    assert live.cancel("a") and running.cancel_requested
    assert not live.cancel("b")  # CANCEL arrived before its stream
    late = TokenStream("b")
    live.add("b", late)
    assert late.cancel_requested
    for stale in ("x", "y", "z"):  # the memory of early cancels is bounded: "x" is forgotten
        live.cancel(stale)
    fresh = TokenStream("x")
    live.add("x", fresh)
    assert not fresh.cancel_requested
    sys.modules.pop("stepaudio_triton.generation", None)


def test_cancelling_a_bls_stream_waits_for_its_final_response(adapter, monkeypatch):
    sys.modules.pop("stepaudio_triton.bls", None)
    bls = importlib.import_module("stepaudio_triton.bls")
    sent, consumed = [], []

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            self.inputs = {t.name: t.value for t in inputs}
            sent.append(self.inputs)

        def exec(self, decoupled):
            if "CANCEL" in self.inputs:
                return iter([])
            return (consumed.append(i) or types.SimpleNamespace(has_error=lambda: False) for i in range(3))

    monkeypatch.setattr(bls.pb_utils, "InferenceRequest", Request, raising=False)
    stream = bls.Stream("tts_llm", {"INPUT_IDS": np.array([1, 2])}, ["OUTPUT_IDS"])
    stream.cancel()
    stream.cancel()  # a second cancel sends nothing
    assert [list(s) for s in sent] == [["INPUT_IDS"], ["CANCEL"]]
    assert sent[1]["CANCEL"][0].decode() == stream.request_id
    assert consumed == [0, 1, 2], "every response up to the final one must be consumed"
    sys.modules.pop("stepaudio_triton.bls", None)


def test_a_failing_bls_cancel_does_not_raise(adapter, monkeypatch):
    sys.modules.pop("stepaudio_triton.bls", None)
    bls = importlib.import_module("stepaudio_triton.bls")

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            self.cancel = any(t.name == "CANCEL" for t in inputs)

        def exec(self, decoupled):
            if self.cancel:
                raise RuntimeError("tts_llm is gone")
            return iter([])

    monkeypatch.setattr(bls.pb_utils, "InferenceRequest", Request, raising=False)
    bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"]).cancel()  # callers are ending a request
    sys.modules.pop("stepaudio_triton.bls", None)
