"""The PyTorch flow session the CPU backend's opt-in bf16 flow_decoder runs: same I/O contract as flow_decoder.onnx
and exactly the in-process runner's result for the same feeds and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stepaudio.decoder import Token2Wav
from stepaudio.decoder.feeds import FLOW_INPUTS, FLOW_OUTPUTS
from stepaudio.decoder.token2wav import DecoderNoise, Token2WavRequest
from stepaudio.decoder.torch_session import TorchFlowSession, flow_session
from tests.decoder.inputs import make_tokens, make_voice


def batch_feeds(runner, read_only=False):
    """Two requests of different lengths, padded into one batch of ``FLOW_INPUTS``."""
    requests, noises = [], []
    for seed, n_tokens, n_prompt, n_frames in ((3, 30, 10, 22), (4, 36, 12, 26)):
        request = Token2WavRequest(make_tokens(seed, n_tokens), *make_voice(seed, n_prompt, n_frames))
        request.validate(runner.config)
        requests.append(request)
        noises.append(DecoderNoise.from_seed(seed, n_frames, n_tokens, runner.config).flow)
    feeds = runner.flow_feeds(requests, noises)
    for value in feeds.values():
        value.flags.writeable = not read_only  # Triton hands the backend read-only arrays
    return feeds


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_session_gives_what_the_runner_gives(speech_dir, dtype):
    runner = Token2Wav.from_checkpoint(speech_dir, dtype=getattr(torch, dtype))
    threads = torch.get_num_threads()
    session = flow_session({"decoder_dir": str(speech_dir), "flow_dtype": dtype, "intra_op_thread_count": str(threads)})
    assert next(session.flow.parameters()).dtype == getattr(torch, dtype)
    assert [i.name for i in session.get_inputs()] == list(FLOW_INPUTS)
    assert [o.name for o in session.get_outputs()] == list(FLOW_OUTPUTS)
    feeds = batch_feeds(runner)
    mel, lens = runner.run_flow(feeds)
    got_mel, got_lens = session.run(list(FLOW_OUTPUTS), batch_feeds(runner, read_only=True), None)
    assert got_mel.dtype == np.float32
    np.testing.assert_array_equal(got_mel, mel)
    np.testing.assert_array_equal(got_lens, lens)
    assert session.run(["mel_lens"], feeds)[0].tolist() == lens.tolist()  # the outputs asked for, in that order


def test_flow_session_defaults_to_float32_with_one_thread(speech_dir):
    before = torch.get_num_threads()
    try:
        session = flow_session({"decoder_dir": str(speech_dir)})
        assert session.dtype == torch.float32 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("parameters, message", [
    ({"flow_dtype": "float16"}, "unsupported flow dtype 'float16'"),
    ({"flow_dtype": "bf16"}, "unsupported flow dtype 'bf16'"),
    ({"decoder_dir": ""}, "needs the decoder_dir parameter"),
])
def test_bad_parameters_are_refused(speech_dir, parameters, message):
    with pytest.raises(ValueError, match=message):
        flow_session({"decoder_dir": str(speech_dir)} | parameters)


def test_bad_dtypes_inputs_and_outputs_are_errors(speech_dir):
    with pytest.raises(ValueError, match="unsupported flow dtype"):
        TorchFlowSession(speech_dir, torch.float16)
    session = TorchFlowSession(speech_dir)
    with pytest.raises(ValueError, match="missing flow inputs"):
        session.run(["mel"], {"tokens": np.zeros((1, 3), np.int64)})
    with pytest.raises(ValueError, match="unknown flow outputs"):
        session.run(["wave"], {name: np.zeros(1) for name in FLOW_INPUTS})
