"""BLS calls carry the Triton trace of the request their thread serves inside ``execute`` (adapter.serving_trace,
bls._request), with a fake ``triton_python_backend_utils``; the live check is tests/server/test_trace.py."""

from __future__ import annotations

import importlib
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


class Request:
    def __init__(self, trace):
        self._trace = trace

    def trace(self):
        return self._trace

    def request_id(self):
        return ""


class Made:
    """A fake ``pb_utils.InferenceRequest`` that records its keyword arguments."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        Made.made.append(kwargs)

    def exec(self, decoupled=False):
        return iter([]) if decoupled else types.SimpleNamespace(has_error=lambda: False)


@pytest.fixture
def modules(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = lambda name, value: (name, value)
    fake.InferenceResponse = lambda output_tensors=None, error=None: types.SimpleNamespace(
        output_tensors=output_tensors, error=error)
    fake.InferenceRequest = Made
    fake.get_output_tensor_by_name = lambda response, name: None
    fake.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START, fake.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 1, 2
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    for name in ("stepaudio_triton.adapter", "stepaudio_triton.bls"):
        sys.modules.pop(name, None)
    adapter = importlib.import_module("stepaudio_triton.adapter")
    bls = importlib.import_module("stepaudio_triton.bls")
    Made.made = []
    yield adapter, bls
    for name in ("stepaudio_triton.adapter", "stepaudio_triton.bls"):
        sys.modules.pop(name, None)


def test_each_request_s_bls_calls_carry_its_own_trace(modules):
    adapter, bls = modules

    def handle(request):
        bls.call("tts_frontend", {"TEXT": np.array([b"x"])}, [])
        for _ in bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, []):  # made on its own reader thread
            pass
        return []

    with ThreadPoolExecutor(2) as pool:
        adapter.respond_each([Request("trace-a"), Request("trace-b")], handle, pool)
    traces = sorted((m["model_name"], m["trace"]) for m in Made.made)
    assert traces == [("tts_frontend", "trace-a"), ("tts_frontend", "trace-b"),
                      ("tts_llm", "trace-a"), ("tts_llm", "trace-b")]
    assert adapter.serving_trace() is None


def test_no_trace_outside_execute_and_none_after_it(modules):
    adapter, bls = modules
    bls.call("vocoder", {}, [], correlation_id=5, start=True)
    assert "trace" not in Made.made[-1] and Made.made[-1]["correlation_id"] == 5, \
        "a call with no request served passes no trace (the stub refuses trace=None)"
    seen = []
    adapter.respond_each([Request("t")], lambda request: seen.append(adapter.serving_trace()) or [])
    assert seen == ["t"] and adapter.serving_trace() is None


def test_a_decoupled_request_thread_passes_no_trace(modules):
    """2.51 releases the request and its trace when execute returns, before the thread's calls: none may use it."""
    adapter, bls = modules
    done = threading.Event()

    class Threads:
        def submit(self, work):
            threading.Thread(target=lambda: (work(), done.set())).start()

    adapter.serve_decoupled(Request("released-soon"), Threads(), lambda request: bls.call("tts_frontend", {}, []))
    assert done.wait(5)
    assert "trace" not in Made.made[-1]


def test_a_request_without_trace_support_serves_untraced(modules):
    adapter, bls = modules

    class Old:  # a python backend before InferenceRequest.trace()
        def request_id(self):
            return ""

    adapter.respond_each([Old()], lambda request: bls.call("m", {}, []) or [])
    assert "trace" not in Made.made[-1]
