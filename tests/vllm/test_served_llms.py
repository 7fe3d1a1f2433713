"""tts_llm and chat_llm served by a real tritonserver with ``engine: vllm`` (rendered with --set *_engine=vllm) on
tiny Llama twins: ids stream over gRPC and equal the transformers reference, follow the seed, stop on CANCEL, bad
input is INVALID_ARG; chat_llm keeps its template, ASR mode and text deltas on top of vLLM."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch

from clients.triton_io import inputs
from stepaudio.chat.session import TextDeltas, chat_prompt_ids
from stepaudio.chat.template import asr_max_new_tokens, asr_turns, turns_from_json
from stepaudio.checkpoints.layout import CHAT_DIR, LLM_WEIGHTS, LLM_WEIGHTS_INDEX, TTS_DIR
from stepaudio.llm.sampling import SamplingParams, next_token
from stepaudio.llm.tokenizer import Step1Tokenizer
from stepaudio.testing.hf_compat import TINY_LLAMA, write_tiny_llama
from stepaudio.testing.llm import write_llm
from tests.llm.helpers import random_prompt

pytestmark = pytest.mark.server
AUDIO_RANGES = ((3, 4), (65536, 70656))  # tts_llm's allowed_token_ranges


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny tree with both LLM folders' Step1 weights replaced by Llama twins (tokenizer files kept)."""
    root = tmp_path_factory.mktemp("vllm_checkpoints")
    write_llm(root, "tiny", seed=0)
    for folder, seed in ((TTS_DIR, 5), (CHAT_DIR, 6)):
        (root / folder / LLM_WEIGHTS).unlink()
        (root / folder / LLM_WEIGHTS_INDEX).unlink()
        write_tiny_llama(root / folder, TINY_LLAMA, seed=seed)
    return root


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    from export.render_repository import render
    from stepaudio_server.launcher import TritonServer

    repo = tmp_path_factory.mktemp("vllm_repository")
    values = {
        "tts_llm_engine": "vllm",
        "chat_llm_engine": "vllm",
        "llm_max_model_len": "512",
        "llm_gpu_memory_utilization": "0.1",
        "llm_max_batch_size": "2",
    }
    render(checkpoints, repo, None, values, only=["tts_llm", "chat_llm"])
    log = tmp_path_factory.mktemp("vllm_server_log") / "server.log"
    # Waits for readiness: both vLLM engines have started and compiled their warm-up; on a loaded 2-core machine that
    # took over 120 s (the launcher's default), so wait like the main suite's server does.
    with TritonServer(repo, log_path=log).start(timeout=600) as running:
        yield running


def _reference_ids(folder, prompt: list[int], params: SamplingParams) -> list[int]:
    """Greedy ids of transformers' Llama on ``folder`` with our sampler, stopping at the stop id."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    context, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(params.max_new_tokens):
            token = next_token(model(torch.tensor([context])).logits[0, -1], context, params, torch.Generator())
            if token == 3:
                break
            out.append(token)
            context.append(token)
    return out


@pytest.fixture
def client(server):
    import tritonclient.grpc as grpcclient

    responses: queue.Queue = queue.Queue()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    grpc.start_stream(callback=lambda result, error: responses.put((result, error)))
    yield grpc, responses
    grpc.stop_stream(cancel_requests=True)
    grpc.close()


def _request(prompt, max_new_tokens, temperature=0.0, seed=None) -> dict:
    tensors = {
        "INPUT_IDS": np.asarray(prompt, np.int32),
        "MAX_NEW_TOKENS": np.array([max_new_tokens], np.int32),
        "TEMPERATURE": np.array([temperature], np.float32),
    }
    if seed is not None:
        tensors["SEED"] = np.array([seed], np.int64)
    return tensors


def _collect(responses, request_id: str, stop_after: int | None = None, output_name: str = "OUTPUT_IDS"):
    """(items, error) of one stream: the elements of its ``output_name`` tensors in arrival order; returns early
    after ``stop_after`` items."""
    ids = []
    while True:
        result, error = responses.get(timeout=120)
        if error is not None:
            return ids, error
        response = result.get_response()
        if response.id != request_id:
            continue
        output = result.as_numpy(output_name)
        if output is not None:
            ids += output.tolist()
        if stop_after is not None and len(ids) >= stop_after:
            return ids, None
        if response.parameters["triton_final_response"].bool_param:
            return ids, None


def _stream(client, tensors, request_id, stop_after=None, model="tts_llm", output_name="OUTPUT_IDS", parameters=None):
    grpc, responses = client
    grpc.async_stream_infer(model, inputs("grpc", tensors), request_id=request_id, enable_empty_final_response=True,
                            parameters=parameters)
    return _collect(responses, request_id, stop_after, output_name)


def test_greedy_ids_stream_and_equal_transformers_with_our_sampler(client, checkpoints):
    prompt = random_prompt(12, 31)
    params = SamplingParams(temperature=0, max_new_tokens=10, allowed_token_ranges=AUDIO_RANGES)  # served defaults
    expected = _reference_ids(checkpoints / TTS_DIR, prompt, params)
    ids, error = _stream(client, _request(prompt, 10), "greedy")
    assert error is None
    assert ids == expected and all(65536 <= i < 70656 for i in ids)


def test_same_seed_same_ids_other_seed_other_ids(client):
    prompt = random_prompt(9, 32)
    first, error = _stream(client, _request(prompt, 16, temperature=1.0, seed=7), "seed-a")
    assert error is None and len(first) > 0
    assert _stream(client, _request(prompt, 16, temperature=1.0, seed=7), "seed-b") == (first, None)
    assert _stream(client, _request(prompt, 16, temperature=1.0, seed=8), "seed-c")[0] != first


def test_cancel_request_stops_the_stream(client):
    grpc, responses = client
    long = _request(random_prompt(8, 33), 450, temperature=1.0, seed=3)
    # Only the owner knows the token (a request id is never a cancel key). The CANCEL is sent first and answered
    # before the stream starts: the model remembers it and ends the stream as it arrives, so no race with a fast
    # engine finishing all 450 ids first.
    token = "the-owners-secret-token"
    grpc.async_stream_infer("tts_llm", inputs("grpc", {"CANCEL": np.array([token.encode()], np.object_)}),
                            request_id="cancel", enable_empty_final_response=True)
    assert _collect(responses, "cancel") == ([], None)
    ids, error = _stream(client, long, "long", parameters={"cancel_token": token})
    assert "stream cancelled by its owner" in str(error) and len(ids) < 450, (len(ids), error)
    assert _stream(client, _request(random_prompt(5, 34), 4), "after")[0]  # the model keeps serving


@pytest.mark.parametrize(
    "body, message",
    [
        ({"INPUT_IDS": [5, 80000]}, "outside the vocabulary"),
        ({"INPUT_IDS": [5] * 512}, "leaves no room"),
        ({"INPUT_IDS": [5, 6], "TOP_P": [0.0]}, "top_p"),
    ],
    ids=["out-of-vocab", "too-long", "bad-top-p"],
)
def test_bad_input_is_invalid_arg(server, body, message):
    # HTTP generate_stream: an INVALID_ARG error is status 400 there (the gRPC stream callback carries no code).
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{server.http_url}/v2/models/tts_llm/generate_stream", data=json.dumps(body).encode())
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60).read()
    assert caught.value.code == 400
    assert message in caught.value.read().decode()


CHAT_RANGES = ((3, 4), (5, 65536))  # chat_llm's allowed_token_ranges: the stop id and text ids


@pytest.mark.parametrize("mode", ["chat", "asr"])
def test_chat_llm_on_vllm_keeps_our_template_asr_mode_and_text_deltas(client, checkpoints, mode):
    tokenizer = Step1Tokenizer.from_pretrained(checkpoints / CHAT_DIR)
    if mode == "chat":
        messages = '[{"role": "user", "content": "你好"}]'
        turns, max_new = turns_from_json(messages), 8
        tensors = {"MESSAGES": np.array([messages.encode()], np.object_), "TEMPERATURE": np.array([0.0], np.float32),
                   "MAX_NEW_TOKENS": np.array([max_new], np.int32)}
    else:  # greedy and a length budget by default: the served model decides both
        audio = [65536 + i for i in range(0, 60, 7)]
        turns, max_new = asr_turns(audio), asr_max_new_tokens(len(audio))
        tensors = {"MODE": np.array([b"asr"], np.object_), "AUDIO_IDS": np.asarray(audio, np.int32)}
    prompt = chat_prompt_ids(tokenizer, turns, 511)
    params = SamplingParams(temperature=0, max_new_tokens=max_new, repetition_threshold=0, allowed_token_ranges=CHAT_RANGES)
    deltas = TextDeltas(tokenizer)
    expected = "".join(deltas.feed(t) for t in _reference_ids(checkpoints / CHAT_DIR, prompt, params))
    pieces, error = _stream(client, tensors, f"chat-{mode}", model="chat_llm", output_name="TEXT_DELTA")
    assert error is None and expected
    assert b"".join(pieces).decode() == expected
