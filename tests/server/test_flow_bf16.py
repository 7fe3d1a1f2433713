"""The CPU server's opt-in bf16 flow (``decoder_flow_dtype=bfloat16``): flow_decoder served by the library's PyTorch
flow through the CPU backend's ``session_factory``, live on a server of its own that loads flow_decoder alone.

The folder holds no ``model.onnx`` (rendered without exports), so the served answers prove the ONNX file is never
read; the served mel equals the in-process bf16 runner's, and the feed validator still answers INVALID_ARG.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tritonclient.utils import InferenceServerException

from export.render_repository import base_values, render_model, served_models
from stepaudio.checkpoints import layout
from stepaudio.decoder import Token2Wav
from stepaudio.testing.decoder import tiny_config, write_decoder_dir
from stepaudio_server.launcher import TritonServer
from tests.helpers import sigterm_interrupts
from tests.server.test_decoder_isolation import flow_feeds, send

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def bf16_decoder_dir(tmp_path_factory):
    checkpoints = tmp_path_factory.mktemp("bf16_checkpoints")
    write_decoder_dir(checkpoints / layout.TTS_DIR / layout.SPEECH_DECODER_DIR, tiny_config(), seed=11)
    return checkpoints


@pytest.fixture(scope="module")
def bf16_server(bf16_decoder_dir, tmp_path_factory):
    """flow_decoder alone, rendered with decoder_flow_dtype=bfloat16 and no export, on the CPU config."""
    repo = tmp_path_factory.mktemp("bf16_repository")
    values = base_values(bf16_decoder_dir, None, {"decoder_flow_dtype": "bfloat16"})
    (model,) = [m for m in served_models(bf16_decoder_dir) if m.name == "flow_decoder"]
    render_model(model, repo, values)
    assert not list(repo.rglob("*.onnx"))
    log = tmp_path_factory.mktemp("bf16_log") / "server.log"
    with sigterm_interrupts(), TritonServer(repo, model_config_name="cpu", log_path=log).start(timeout=180) as server:
        yield server


@pytest.fixture
def bf16_client(bf16_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(bf16_server.grpc_url)
    yield client
    client.close()


def test_the_served_bf16_flow_equals_the_library_runner(bf16_client, bf16_decoder_dir):
    runner = Token2Wav.from_checkpoint(bf16_decoder_dir / layout.TTS_DIR / layout.SPEECH_DECODER_DIR, dtype=torch.bfloat16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the served flow's intra_op_thread_count
    try:
        for seed, n_tokens in ((1, 40), (2, 27)):
            feeds = flow_feeds(runner, seed, n_tokens=n_tokens)
            mel, mel_lens = runner.run_flow(feeds)
            result = send(bf16_client, "flow_decoder", feeds)
            np.testing.assert_array_equal(result.as_numpy("mel_lens").reshape(-1), mel_lens)
            np.testing.assert_allclose(result.as_numpy("mel"), mel, atol=1e-5, rtol=0)
    finally:
        torch.set_num_threads(threads)


def test_a_hostile_request_is_still_invalid_arg(bf16_client, bf16_decoder_dir):
    runner = Token2Wav.from_checkpoint(bf16_decoder_dir / layout.TTS_DIR / layout.SPEECH_DECODER_DIR)
    feeds = flow_feeds(runner, 3)
    feeds["tokens"][0, 5] = 5120
    with pytest.raises(InferenceServerException) as info:
        send(bf16_client, "flow_decoder", feeds)
    assert "INVALID_ARG" in str(info.value.status()) and "contains id 5120" in str(info.value)
    assert bf16_client.is_server_ready() and bf16_client.is_model_ready("flow_decoder")
