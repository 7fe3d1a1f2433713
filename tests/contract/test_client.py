"""``stepaudio_contract.client`` builds the same tensors and tritonclient inputs as the copies it replaced (their
code is restated here, literally, as the reference): dtype, shape and bytes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from stepaudio_contract import client
from stepaudio_contract.specs import SAMPLING, SESSION_OPTIONS


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tolist() == b.tolist()


@pytest.mark.parametrize("text", ["Tingting", "你好，世界", "", "a\x00b"])
def test_string_tensors_match_the_old_helpers(text):
    # gateway/triton.py, clients/tts.py, clients/chat.py, voice_chat.py, realtime_session.py, adapter.string_tensor
    assert _same(client.string(text), np.array([text.encode()], dtype=np.object_))
    # chat_reply's batched copy
    assert _same(client.string(text, batched=True), np.array([[text.encode()]], dtype=np.object_))
    assert client.string(text)[0] == text.encode("utf-8")


def _old_gateway_sampling(seed, temperature, top_p):
    given = {"seed": seed, "temperature": temperature, "top_p": top_p}
    return {t.name: np.array([given[t.name.lower()]], dtype=t.numpy_dtype) for t in SAMPLING
            if given.get(t.name.lower()) is not None}


@pytest.mark.parametrize("seed, temperature, top_p", [(7, 0.5, 0.9), (None, 0.5, None), (None, None, None), (0, 0.0, 1.0)])
def test_sampling_tensors_match_the_old_gateway_and_cli_copies(seed, temperature, top_p):
    expected = _old_gateway_sampling(seed, temperature, top_p)
    built = client.sampling({"seed": seed, "temperature": temperature, "top_p": top_p})
    assert list(built) == list(expected) and all(_same(built[k], expected[k]) for k in expected)
    # clients/tts.py: every SAMPLING tensor from the argparse attribute of its name
    args = SimpleNamespace(seed=seed, temperature=temperature, top_p=top_p, top_k=None, max_new_tokens=300)
    old_cli = {t.name: np.array([getattr(args, t.name.lower())], t.numpy_dtype) for t in SAMPLING
               if getattr(args, t.name.lower()) is not None}
    from_args = client.sampling(args)
    assert list(from_args) == list(old_cli) and all(_same(from_args[k], old_cli[k]) for k in old_cli)
    assert from_args["MAX_NEW_TOKENS"].dtype == np.int32 and "TOP_K" not in from_args


def _old_session_tensors(options, sample_rate, speaker):
    """gateway/realtime.py SessionOptions.tensors and clients/realtime_client.py send, as they were."""
    tensors = {"SAMPLE_RATE": np.array([[sample_rate]], dtype=np.int32)}
    for option in SESSION_OPTIONS:
        value = getattr(options, option.name.lower())
        if value is not None:
            tensors[option.name] = np.array([[value]], dtype=option.numpy_dtype)
    if speaker is not None:
        tensors["SPEAKER"] = np.array([[speaker.encode()]], dtype=np.object_)
    return tensors


@pytest.mark.parametrize("options, speaker", [
    (SimpleNamespace(seed=3, speculation=False, max_new_tokens=128, tts_max_new_tokens=512), "Tingting"),
    (SimpleNamespace(seed=None, speculation=None, max_new_tokens=None, tts_max_new_tokens=None), None),
    (SimpleNamespace(seed=2**40, speculation=True, max_new_tokens=None, tts_max_new_tokens=1), "小明"),
])
def test_session_start_tensors_match_both_old_copies(options, speaker):
    expected = _old_session_tensors(options, 16000, speaker)
    built = client.session_start(options, 16000, speaker)
    assert list(built) == list(expected)
    assert all(_same(built[k], expected[k]) for k in expected)
    if options.speculation is not None:
        assert built["SPECULATION"].dtype == np.bool_


def _old_inputs(module, tensors):
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, value in tensors.items():
        tensor = module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


REQUEST = {
    "TEXT": np.array(["你好".encode()], dtype=np.object_),
    "AUDIO": np.linspace(-1, 1, 320, dtype=np.float32)[None],
    "SAMPLE_RATE": np.array([[16000]], dtype=np.int32),
    "SEED": np.array([2**40], dtype=np.int64),
    "SPECULATION": np.array([[True]]),
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_infer_inputs_match_the_old_loops(protocol):
    module = pytest.importorskip(f"tritonclient.{protocol}")
    built, expected = client.infer_inputs(REQUEST, protocol), _old_inputs(module, REQUEST)
    assert [(i.name(), i.shape(), i.datatype()) for i in built] == [(i.name(), i.shape(), i.datatype()) for i in expected]
    content = (lambda i: i._get_content()) if protocol == "grpc" else (lambda i: i._get_binary_data())
    assert [content(i) for i in built] == [content(i) for i in expected]
    assert built[0].datatype() == "BYTES" and built[1].shape() == [1, 320]
    names = [o.name() for o in client.requested_outputs(["EVENT", "WAVEFORM"], protocol)]
    assert names == ["EVENT", "WAVEFORM"]


def test_an_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="http or grpc"):
        client.infer_inputs(REQUEST, "udp")
