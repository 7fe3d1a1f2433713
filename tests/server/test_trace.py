"""Triton's trace API on the live server: a traced offline request is one tree (the ensemble's steps and the BLS calls
that ``tts`` makes inside ``execute``); a traced ``tts_stream`` records its first response and traces alone (2.51:
its BLS calls run after ``execute`` returned, when the request and its trace are released; adapter.serving_trace)."""

from __future__ import annotations

import glob
import time

import numpy as np
import pytest

from bench import trace_timeline as tt
from tests.server.helpers import grpc_input

pytestmark = pytest.mark.server


def _s(text: str) -> np.ndarray:
    return np.array([text.encode()], dtype=np.object_)


def _tensors(batched: bool) -> dict[str, np.ndarray]:
    tensors = {"TEXT": _s("你好，世界。"), "SPEAKER": _s("Tingting"), "SEED": np.array([3], np.int64),
               "MAX_NEW_TOKENS": np.array([30], np.int32)}
    return {k: (v[None] if batched else v) for k, v in tensors.items()}


def _trees(server, since_ns: int, models: set[str], timeout_s: float = 30.0) -> dict[int, tt.Span]:
    """The spans written so far, once a root of each of ``models`` since ``since_ns`` is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = tt.parse_trace(tt.read_trace_files(sorted(glob.glob(f"{server.trace_file}.*"))))
        if all(tt.stream_roots(spans, model, since_ns) for model in models) or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def test_a_traced_request_is_one_tree_with_its_bls_calls(triton_server, grpc_client):
    from clients import triton_io

    since = time.monotonic_ns()
    tt.trace_setting(triton_server.http_url, triton_server.admin_headers, tt.TRACE_ON)
    try:
        grpc_client.infer("ensemble_tts", [grpc_input(k, v) for k, v in _tensors(True).items()])
        chunks = list(triton_io.grpc_stream(triton_io.client(triton_server.grpc_url, "grpc"), "tts_stream",
                                            _tensors(False), ["WAVEFORM"]))
    finally:
        tt.trace_setting(triton_server.http_url, triton_server.admin_headers, tt.TRACE_OFF)
    assert chunks
    spans = _trees(triton_server, since, {"ensemble_tts", "tts_stream"})
    (root,) = tt.stream_roots(spans, "ensemble_tts", since)
    below = {span.model: span for span in spans.values() if root in tt.ancestors(spans, span.id)}
    assert {"tts", "tts_frontend", "tts_llm", "flow_decoder", "vocoder"} <= set(below), sorted(below)
    assert below["tts_frontend"].parent == below["tts_llm"].parent == below["tts"].id, "BLS calls join their caller"
    for span in below.values():
        assert span.first("REQUEST_START") <= span.first("REQUEST_END"), span.model

    (stream,) = tt.stream_roots(spans, "tts_stream", since)
    assert not [s for s in spans.values() if s.parent == stream.id], \
        "tts_stream's BLS calls joined its trace: Triton now keeps a decoupled request's trace; update adapter.py"
    timeline = tt.stream_timeline(stream)
    assert timeline["first_chunk_ms"] > timeline["stream thread → first response"] > 0
