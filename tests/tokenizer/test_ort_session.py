"""Front-end ONNX sessions ask for the CUDA EP where the installed onnxruntime offers it and log what they got."""

from __future__ import annotations

import logging

import pytest

from stepaudio.tokenizer.ort_session import CPU_EP, CUDA_EP, create_session, requested_providers


def test_cuda_is_asked_for_only_where_the_build_offers_it():
    assert requested_providers([CUDA_EP, CPU_EP]) == [(CUDA_EP, {"device_id": 0}), CPU_EP]
    assert requested_providers([CPU_EP]) == [CPU_EP]
    assert requested_providers([CUDA_EP, CPU_EP], "cpu") == [CPU_EP]
    assert requested_providers([CPU_EP], "cuda", 3) == [(CUDA_EP, {"device_id": 3}), CPU_EP]
    with pytest.raises(ValueError, match="device must be one of"):
        requested_providers([CPU_EP], "gpu")


def test_a_session_says_which_providers_it_got(caplog):
    from stepaudio.realtime.vad import default_model_path

    with caplog.at_level(logging.INFO, logger="stepaudio.tokenizer.ort_session"):
        session = create_session(default_model_path())
    assert CPU_EP in session.get_providers()
    assert any("providers" in r.getMessage() and CPU_EP in r.getMessage() for r in caplog.records)


def test_asking_for_cuda_on_a_cpu_build_falls_back_with_a_warning(caplog):
    import onnxruntime as ort

    from stepaudio.realtime.vad import default_model_path

    if CUDA_EP in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP")
    with caplog.at_level(logging.WARNING, logger="stepaudio.tokenizer.ort_session"):
        session = create_session(default_model_path(), device="cuda")
    assert session.get_providers() == [CPU_EP]
    assert any(r.levelno == logging.WARNING and "CPU" in r.getMessage() for r in caplog.records)
