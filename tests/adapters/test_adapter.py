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
