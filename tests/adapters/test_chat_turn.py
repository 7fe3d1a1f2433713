"""The chat turn (stepaudio_triton/chat_turn.py) over a fake transport: what each served model is asked, in which
shapes, how a reply becomes sentences and speech, and how a stop reaches every stream. No Triton: the module must
import without the stub's ``triton_python_backend_utils``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from stepaudio.errors import Cancelled
from stepaudio_contract.client import string
from stepaudio_triton.chat_turn import ChatTurn, ReplyVoice, TurnModels, TurnRequest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = ("PROMPT_AUDIO", "PROMPT_SAMPLE_RATE", "PROMPT_TEXT")


class FakeStream:
    """Yields its responses; once asked to cancel, it ends CANCELLED (as a called model does). ``gate`` (an Event)
    holds it before each response, so a test can stop a turn mid-stream."""

    def __init__(self, model: str, responses: list[dict], gate: threading.Event | None = None):
        self.model, self.responses, self.gate = model, responses, gate
        self.cancel_requests = 0
        self.read_to_end = False

    def __iter__(self):  # like bls.Stream: a second loop goes on where the first stopped; an ended stream is empty
        while not self.read_to_end:
            if self.gate is not None:
                self.gate.wait(5)
            if self.cancel_requests:
                self.read_to_end = True
                raise Cancelled(f"{self.model}: cancelled")
            if not self.responses:
                self.read_to_end = True
                return
            yield self.responses.pop(0)

    def request_cancel(self) -> None:
        self.cancel_requests += 1

    def cancel(self) -> None:
        self.request_cancel()


def deltas(*texts: str) -> list[dict]:
    return [{"TEXT_DELTA": string(text)} for text in texts]


class FakeTransport:
    def __init__(self, reply: list[str], transcript: str = "heard words", gate: threading.Event | None = None):
        self.reply, self.transcript, self.gate = reply, transcript, gate
        self.calls: list[tuple[str, dict]] = []
        self.streams: list[tuple[FakeStream, dict, bool]] = []

    def call(self, model, inputs, outputs, correlation_id=None, start=False, end=False):
        self.calls.append((model, inputs))
        if model == "tokenizer":
            return {"AUDIO_IDS": np.arange(6, dtype=np.int32)[None]}
        return {"WAVEFORM": np.ones((1, 10), np.float32), "SAMPLE_RATE": np.array([[22050]], np.int32)}

    def stream(self, model, inputs, outputs, cancellable=False):
        if model == "chat_llm" and "MODE" in inputs:
            stream = FakeStream(model, deltas(self.transcript))
        elif model == "chat_llm":
            stream = FakeStream(model, deltas(*self.reply), self.gate)
        else:  # tts_stream: two chunks per sentence
            stream = FakeStream(model, [{"WAVEFORM": np.ones(5, np.float32), "SAMPLE_RATE": np.array([22050])} for _ in range(2)])
        self.streams.append((stream, inputs, cancellable))
        return stream

    def opened(self, model: str, asr: bool = False) -> list[tuple[FakeStream, dict, bool]]:
        return [s for s in self.streams if s[0].model == model and ("MODE" in s[1]) == asr]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_the_module_imports_without_triton():
    code = ("import sys\nsys.modules['triton_python_backend_utils'] = None\nsys.modules['tritonclient'] = None\n"
            "import stepaudio_triton.chat_turn\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_an_audio_turn_tokenizes_transcribes_and_streams_the_reply_in_sentences(pool):
    transport = FakeTransport(["Hello there. How", " are you?", " Fine"])
    audio = np.zeros((1, 1600), np.float32)
    sampling = {"SEED": np.array([7], np.int64)}
    request = TurnRequest([{"role": "user", "content": "hi"}], audio=audio, sample_rate=16000, sampling=sampling)
    turn = ChatTurn(transport, TurnModels(), request, pool).start()

    (model, tokenizer_inputs), = transport.calls
    assert model == "tokenizer"
    assert tokenizer_inputs["AUDIO"].shape == (1, 1, 1600) and tokenizer_inputs["SAMPLE_RATE"].tolist() == [[16000]]
    (_, chat_inputs, cancellable), = transport.opened("chat_llm")
    assert cancellable and json.loads(chat_inputs["MESSAGES"][0]) == [{"role": "user", "content": "hi"}]
    assert chat_inputs["AUDIO_IDS"].tolist() == list(range(6)) and chat_inputs["SEED"].tolist() == [7]

    pieces = list(turn.reply(max_sentence_chars=100))
    assert pieces == [("Hello there. How", ["Hello there."]), (" are you?", ["How are you?"]), (" Fine", []),
                      ("", ["Fine"])]
    assert turn.transcribing and turn.transcript(5) == "heard words"
    (_, asr_inputs, _), = transport.opened("chat_llm", asr=True)
    assert asr_inputs["MODE"].tolist() == [b"asr"] and asr_inputs["AUDIO_IDS"].tolist() == list(range(6))


def test_a_typed_turn_makes_no_tokenizer_or_asr_request(pool):
    transport = FakeTransport(["ok."])
    turn = ChatTurn(transport, TurnModels(), TurnRequest([{"role": "user", "content": "typed"}]), pool).start()
    assert [delta for delta in turn.deltas()] == ["ok."]
    assert transport.calls == [] and transport.opened("chat_llm", asr=True) == []
    assert not turn.transcribing and turn.transcript() == ""


def test_ids_given_by_the_caller_skip_the_tokenizer(pool):
    transport = FakeTransport(["ok."])
    ids = np.array([3, 4], np.int32)
    turn = ChatTurn(transport, TurnModels(), TurnRequest([], audio_ids=ids), pool).start()
    assert transport.calls == [] and transport.opened("chat_llm")[0][1]["AUDIO_IDS"].tolist() == [3, 4]
    assert "".join(turn.deltas()) == "ok." and turn.transcript(5) == "heard words"


def test_speech_requests_carry_the_voice_and_settings_in_each_models_shapes(pool):
    transport = FakeTransport([])
    voice = ReplyVoice(speaker="Tingting", seed=11, max_new_tokens=90)
    turn = ChatTurn(transport, TurnModels(), TurnRequest([], voice=voice), pool).start()

    chunks = list(turn.speak("One."))
    assert [(wave.size, rate) for wave, rate in chunks] == [(5, 22050), (5, 22050)]
    (_, tts, cancellable), = transport.opened("tts_stream")
    assert cancellable
    assert {name: (value.shape, value.dtype.kind) for name, value in tts.items()} == {
        "SPEAKER": ((1,), "O"), "TEXT": ((1,), "O"), "SEED": ((1,), "i"), "MAX_NEW_TOKENS": ((1,), "i")}
    assert tts["TEXT"].tolist() == [b"One."] and tts["SEED"].dtype == np.int64 and tts["MAX_NEW_TOKENS"].tolist() == [90]

    wave, rate = turn.speak_whole("Two.")
    (model, whole), = transport.calls
    assert model == "ensemble_tts" and wave.shape == (10,) and rate == 22050
    assert all(value.shape == (1, 1) for value in whole.values()) and whole["TEXT"].tolist() == [[b"Two."]]


def test_a_cloned_voice_sends_its_prompt_tensors_and_no_speaker():
    prompt = {"PROMPT_AUDIO": np.zeros(8, np.float32), "PROMPT_SAMPLE_RATE": np.array([16000], np.int32),
              "PROMPT_TEXT": string("hi")}
    inputs = ReplyVoice(prompt=prompt, prompt_names=PROMPT).validate().tts_inputs("x", batched=True)
    assert set(inputs) == {*PROMPT, "TEXT"} and inputs["PROMPT_AUDIO"].shape == (1, 8)


@pytest.mark.parametrize("voice, message", [
    (ReplyVoice(prompt={"PROMPT_AUDIO": np.zeros(8, np.float32)}, prompt_names=PROMPT), "needs all of"),
    (ReplyVoice(speaker="a", prompt={name: string("x") for name in PROMPT}, prompt_names=PROMPT), "either SPEAKER"),
    (ReplyVoice(), "needs a SPEAKER"),
])
def test_a_bad_voice_is_refused_before_any_request(pool, voice, message):
    transport = FakeTransport(["x"])
    with pytest.raises(ValueError, match=message):
        ChatTurn(transport, TurnModels(), TurnRequest([], voice=voice), pool)
    assert transport.calls == [] and transport.streams == []


@pytest.mark.parametrize("request_, message", [
    (TurnRequest([], audio=np.zeros((1, 4), np.float32)), "needs SAMPLE_RATE"),
    (TurnRequest([], audio=np.zeros(4, np.float32), sample_rate=16000), r"\[channels, samples\]"),
    (TurnRequest([], audio=np.zeros((1, 4), np.float32), sample_rate=16000, audio_ids=np.zeros(2, np.int32)), "not both"),
])
def test_bad_turn_audio_is_refused(pool, request_, message):
    with pytest.raises(ValueError, match=message):
        request_.validate()


def test_stop_from_another_thread_ends_every_open_stream_and_drain_reads_them_to_the_end(pool):
    gate = threading.Event()
    transport = FakeTransport(["a", "b", "c"], gate=gate)
    turn = ChatTurn(transport, TurnModels(), TurnRequest([], voice=ReplyVoice(speaker="s")), pool).start()
    speech = turn.speak("Hi.")
    next(speech)  # a sentence is being spoken while the reply is still coming
    got: list = []

    def read_reply():
        try:
            got.extend(turn.deltas())
        except Cancelled as exc:
            got.append(exc)

    reader = threading.Thread(target=read_reply)
    reader.start()
    turn.stop()  # e.g. a barge-in, on the session's thread
    gate.set()
    reader.join(5)
    assert isinstance(got[-1], Cancelled) and "a" not in got  # nothing of the reply after the stop
    with pytest.raises(Cancelled):
        next(speech)
    chat, tts = transport.opened("chat_llm")[0][0], transport.opened("tts_stream")[0][0]
    assert chat.cancel_requests and tts.cancel_requests
    with pytest.raises(Cancelled):
        list(turn.speak("Later."))  # a stopped turn opens no new stream
    assert len(transport.opened("tts_stream")) == 1
    turn.drain()
    assert chat.read_to_end and tts.read_to_end
    assert sorted(turn.cancelled_models) == ["chat_llm", "tts_stream"]


def test_a_stream_opened_by_a_stopped_turn_is_cancelled_at_once(pool):
    transport = FakeTransport(["x"])
    turn = ChatTurn(transport, TurnModels(), TurnRequest([]), pool)
    turn.stop()  # before start: e.g. a speculative reply discarded while its worker was still queued
    turn.start()
    (stream, _, _), = transport.opened("chat_llm")
    assert stream.cancel_requests == 1
    with pytest.raises(Cancelled):
        list(turn.deltas())


def test_a_turn_stopped_while_its_audio_is_tokenized_opens_no_chat_stream(pool):
    transport = FakeTransport(["x"])
    turn = ChatTurn(transport, TurnModels(), TurnRequest([], audio=np.zeros((1, 4), np.float32), sample_rate=16000),
                    pool)
    original = transport.call

    def call_then_stop(*args, **kwargs):
        result = original(*args, **kwargs)
        turn.stop()
        return result

    transport.call = call_then_stop
    with pytest.raises(Cancelled):
        turn.start()
    assert transport.streams == []
