"""Adapter helpers with a fake ``triton_python_backend_utils`` (pure logic; the live server tests cover the rest)."""

from __future__ import annotations

import gc
import importlib
import sys
import types
import weakref
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
    INVALID_ARG, INTERNAL, UNAVAILABLE, CANCELLED = "INVALID_ARG", "INTERNAL", "UNAVAILABLE", "CANCELLED"

    def __init__(self, message, code):
        self.message, self.code = message, code


logged: list[str] = []


class FakeRequest(dict):
    """Input tensors by name, and the request parameters a BLS caller sets."""

    def __init__(self, tensors=(), parameters="{}", request_id=""):
        super().__init__(tensors)
        self._parameters, self._request_id = parameters, request_id

    def parameters(self):
        return self._parameters

    def request_id(self):
        return self._request_id


@pytest.fixture
def adapter(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = FakeTensor
    fake.InferenceResponse = FakeResponse
    fake.TritonError = FakeError
    fake.get_input_tensor_by_name = lambda request, name: request.get(name)
    fake.get_output_tensor_by_name = lambda response, name: getattr(response, "tensor", lambda name: None)(name)
    fake.Logger = types.SimpleNamespace(log_error=lambda message: logged.append(message))
    fake.triton_string_to_numpy = lambda data_type: {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32}[data_type]
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


def test_outputs_take_the_dtype_their_config_declares(adapter):
    outputs = adapter.Outputs({"output": [{"name": "LEN", "data_type": "TYPE_INT64"}, {"name": "MEL", "data_type": "TYPE_FP32"}]})
    assert outputs("LEN", [[3]]).value.dtype == np.int64
    mel = outputs("MEL", np.ones((2, 80), np.float64))
    assert (mel.name, mel.value.dtype, mel.value.shape) == ("MEL", np.float32, (2, 80))
    with pytest.raises(KeyError):
        outputs("UNDECLARED", [1])


def test_given_inputs_keeps_only_what_the_request_carries(adapter):
    request = FakeRequest({"SEED": FakeTensor("SEED", np.array([7]))})
    given = adapter.given_inputs(request, ["TEMPERATURE", "SEED"])
    assert list(given) == ["SEED"] and given["SEED"].tolist() == [7]


def test_inputs_and_bls_outputs_own_their_memory(adapter):
    """A view into the stub's shared memory dies when the region is remapped: every array we keep is a copy."""
    buffer = np.arange(6, dtype=np.float32)
    request = {"X": FakeTensor("X", buffer)}
    value = adapter.optional_input(request, "X")
    assert np.array_equal(value, buffer) and not np.shares_memory(value, buffer)
    sys.modules.pop("stepaudio_triton.bls", None)
    bls = importlib.import_module("stepaudio_triton.bls")
    bls.pb_utils.get_output_tensor_by_name = lambda response, name: FakeTensor(name, buffer)
    out = bls.outputs(object(), ["Y"])["Y"]
    assert np.array_equal(out, buffer) and not np.shares_memory(out, buffer)
    sys.modules.pop("stepaudio_triton.bls", None)


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

    class Named(FakeRequest):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def __eq__(self, other):
            return self.name == other

    logged.clear()
    ok, bad, boom = adapter.respond_each([Named("ok"), Named("bad"), Named("boom")], handle, pool)
    assert ok.output_tensors == ["ok"]
    assert (bad.error.code, bad.error.message) == ("INVALID_ARG", "bad request")
    assert boom.error.code == "INTERNAL" and "RuntimeError: bug" in boom.error.message
    assert len(logged) == 1 and "Traceback" in logged[0] and "bug" in logged[0], "our faults are logged, bad input is not"


def test_error_codes_follow_the_exception_type_and_survive_bls(adapter):
    from stepaudio.errors import Cancelled, Unavailable
    from stepaudio_contract import errors

    direct, over_bls = FakeRequest(), FakeRequest(request_id="stepaudio-bls-0123456789abcdef")
    assert adapter.error_response(ValueError("x"), FakeRequest(parameters='{"stepaudio_error_codes": true}')).error.message == "[INVALID_ARG] x"
    for exc, code in ((ValueError("text is empty"), "INVALID_ARG"), (Unavailable("full"), "UNAVAILABLE"),
                      (Cancelled("gone"), "CANCELLED"), (KeyError("x"), "INTERNAL")):
        response = adapter.error_response(exc, direct)
        assert response.error.code == code
        assert not response.error.message.startswith("["), "direct clients read the plain message"
        tagged = adapter.error_response(exc, over_bls).error.message
        assert tagged.startswith(f"[{code}] ")
        raised = errors.from_tagged(tagged, "m")
        assert errors.code_name(raised) == code, "the caller raises the same kind of exception"
    # A bad-input message that looks like an exception name stays bad input (no guessing from the text).
    assert errors.code_name(errors.from_tagged("[INVALID_ARG] KeyError: looks internal", "m")) == "INVALID_ARG"
    # Untagged errors come from Triton itself (a dead stub, a model not loaded): unavailable, not bad input.
    assert isinstance(errors.from_tagged("Stub process 'tts_0_1' is not healthy.", "tts"), Unavailable)


@pytest.mark.parametrize("pool", [None, ThreadPoolExecutor(2)])
def test_a_failed_request_is_released_when_execute_returns(adapter, pool):
    """The stub crash: a kept exception's traceback held the request (and BLS responses) past ``execute`` in a
    reference cycle, freed later by the garbage collector on whatever thread ran it. Now nothing outlives it."""

    def handle(request):
        raise ValueError("bad")

    request = FakeRequest()
    released = weakref.ref(request)
    gc.disable()
    try:
        responses = adapter.respond_each([request], handle, pool)
        del request
        assert released() is None, "the failed request is still referenced after execute returned"
    finally:
        gc.enable()
    assert responses[0].error.code == "INVALID_ARG"


class FakeBlsResponse:
    def __init__(self, code, message):
        self._error = types.SimpleNamespace(code=lambda: code, message=lambda: message)

    def has_error(self):
        return True

    def error(self):
        return self._error


def test_bls_errors_keep_their_code(adapter, monkeypatch):
    sys.modules.pop("stepaudio_triton.bls", None)
    bls = importlib.import_module("stepaudio_triton.bls")
    # BLS responses arrive as INTERNAL whatever the model sent: the tag our models write decides.
    with pytest.raises(ValueError, match="^text is empty$"):
        bls.raise_if_error(FakeBlsResponse("INTERNAL", "[INVALID_ARG] text is empty"), "m")
    with pytest.raises(RuntimeError, match="KeyError: 'x'"):
        bls.raise_if_error(FakeBlsResponse("INTERNAL", "[INTERNAL] internal error: KeyError: 'x'"), "m")
    sys.modules.pop("stepaudio_triton.bls", None)


def test_a_cancel_that_overtakes_its_stream_still_cancels_it(adapter):
    from stepaudio.llm.engine import TokenStream

    sys.modules.pop("stepaudio_triton.generation", None)
    generation = importlib.import_module("stepaudio_triton.generation")
    live = generation.LiveStreams(remembered_cancels=2)
    running = TokenStream("a")
    live.add("token-a", running)
    assert not live.cancel("a"), "a request id is not a cancel key"
    assert live.cancel("token-a") and running.cancel_requested
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
    sent, consumed, request_ids = [], [], []

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            self.inputs = {t.name: t.value for t in inputs}
            sent.append(self.inputs)
            request_ids.append(request_id)

        def exec(self, decoupled):
            if "CANCEL" in self.inputs:
                return iter([])
            return (consumed.append(i) or types.SimpleNamespace(has_error=lambda: False, output_tensors=lambda: [])
                    for i in range(3))

    monkeypatch.setattr(bls.pb_utils, "InferenceRequest", Request, raising=False)
    stream = bls.Stream("tts_llm", {"INPUT_IDS": np.array([1, 2])}, ["OUTPUT_IDS"], cancellable=True)
    stream.cancel()
    stream.cancel()  # a second cancel sends nothing
    assert [list(s) for s in sent] == [["INPUT_IDS"], ["CANCEL"]]
    assert request_ids[0] == "stepaudio-bls-" + stream.cancel_token and len(stream.cancel_token) == 32
    assert sent[1]["CANCEL"][0].decode() == stream.cancel_token, "CANCEL names the stream's secret token"
    assert request_ids[1] != request_ids[0]
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
    bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"], cancellable=True).cancel()  # callers are ending
    sys.modules.pop("stepaudio_triton.bls", None)


def _bls_with_requests(monkeypatch, request_class):
    sys.modules.pop("stepaudio_triton.bls", None)
    bls = importlib.import_module("stepaudio_triton.bls")
    monkeypatch.setattr(bls.pb_utils, "InferenceRequest", request_class, raising=False)
    return bls


def test_bls_stream_objects_live_on_one_reader_thread(adapter, monkeypatch):
    """Every Triton object of a stream is made, read and dropped on its reader thread; the consumer gets copies."""
    import threading

    threads_used = set()

    class Response:
        def __init__(self, ids, error=None, error_output=None):
            threads_used.add(threading.get_ident())
            self.ids, self._error, self._error_output = ids, error, error_output

        def has_error(self):
            threads_used.add(threading.get_ident())
            return self._error is not None

        def error(self):
            return types.SimpleNamespace(message=lambda: self._error)

        def output_tensors(self):
            threads_used.add(threading.get_ident())
            return [self.ids]

        def tensor(self, name):
            threads_used.add(threading.get_ident())
            if name == "ERROR":
                return None if self._error_output is None else FakeTensor(name, np.array([self._error_output.encode()], object))
            return FakeTensor(name, self.ids)

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            threads_used.add(threading.get_ident())

        def exec(self, decoupled):
            threads_used.add(threading.get_ident())
            return iter(next(scripts)())  # the responses are made on the calling (reader) thread

    scripts = iter([
        lambda: [Response(np.array([1, 2])), Response(np.array([3])), Response(None, "[INVALID_ARG] bad ids"),
                 Response(np.array([4]))],
        # a later error arrives as the ERROR output of a normal response (errors.ERROR_OUTPUT)
        lambda: [Response(np.array([5])), Response(None, error_output="[CANCELLED] stream cancelled by its owner after 1 ids")],
    ])
    bls = _bls_with_requests(monkeypatch, Request)
    stream = bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"])
    received = []
    with pytest.raises(ValueError, match="^bad ids$"):  # the called model's code survives the thread hop
        for outputs in stream:
            received.append(outputs["OUTPUT_IDS"].tolist())
    assert received == [[1, 2], [3]]
    assert len(threads_used) == 1 and threading.get_ident() not in threads_used
    stream._reader.join(5)
    assert not stream._reader.is_alive(), "the reader drains the stream to its end by itself"
    from stepaudio.errors import Cancelled

    with pytest.raises(Cancelled, match="after 1 ids"):
        for outputs in bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"]):
            received.append(outputs["OUTPUT_IDS"].tolist())
    assert received[-1] == [5]
    sys.modules.pop("stepaudio_triton.bls", None)


def test_a_stalled_bls_stream_is_abandoned_as_unavailable(adapter, monkeypatch):
    """Triton 2.51 never ends the stream of a stub that died: the consumer stops waiting after the stall timeout."""
    import threading

    from stepaudio.errors import Unavailable

    never = threading.Event()
    sent = []

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            sent.append([t.name for t in inputs])

        def exec(self, decoupled):
            def responses():  # a dead stub: nothing, ever
                never.wait()
                yield from ()
            return responses()

    bls = _bls_with_requests(monkeypatch, Request)
    bls.configure({"parameters": {"bls_stall_timeout_s": {"string_value": "0.2"}}})
    stream = bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"], cancellable=True)
    assert stream.stall_timeout_s == 0.2
    with pytest.raises(Unavailable, match="tts_llm sent nothing for 0.2 s"):
        next(iter(stream))
    assert bls.stall_timeout.abandoned_readers == 1 and any("abandoned" in line for line in logged)
    stream.cancel()  # returns at once: nothing to cancel on a dead stub
    assert sent == [["INPUT_IDS"]]
    never.set()
    sys.modules.pop("stepaudio_triton.bls", None)


def test_a_decoupled_response_holds_only_the_requested_outputs(adapter, monkeypatch):
    """2.51's response sender drops unrequested outputs without the GIL (freeing numpy arrays without it):
    ``adapter.send`` never gives it one to drop."""

    class Tensor:
        def __init__(self, name):
            self._name = name

        def name(self):
            return self._name

    class Sender:
        sent = []

        def send(self, response, flags=0):
            self.sent.append(([t.name() for t in response.output_tensors], flags))

    monkeypatch.setattr(adapter.pb_utils, "TRITONSERVER_RESPONSE_COMPLETE_FINAL", 1, raising=False)
    request = types.SimpleNamespace(requested_output_names=lambda: ["WAVEFORM"])
    sender = Sender()
    adapter.send(sender, request, [Tensor("WAVEFORM"), Tensor("SAMPLE_RATE")])
    adapter.send(sender, request, [Tensor("SAMPLE_RATE"), Tensor("WAVEFORM")], final=True)
    assert sender.sent == [(["WAVEFORM"], 0), (["WAVEFORM"], 1)]


def test_a_finished_bls_iterator_outlives_its_reader_for_the_grace_period(adapter, monkeypatch):
    """The stub's table drops its reference to a finished iterator on a thread without the GIL; ours must be the
    last, so the iterator is kept for a grace period after its stream ends and released by a Python thread."""

    class Responses:
        def __iter__(self):
            return iter([])

    made = []

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            pass

        def exec(self, decoupled):
            made.append(Responses())
            return made[-1]

    bls = _bls_with_requests(monkeypatch, Request)
    bls.retired.grace_s = 60
    stream = bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"])
    assert list(stream) == []
    stream._reader.join(5)
    kept = weakref.ref(made.pop())
    gc.collect()
    assert kept() is not None and len(bls.retired) == 1, "released when its reader ended"
    bls.retired.grace_s = 0  # the next stream's end releases every iterator past its grace period
    list(bls.Stream("tts_llm", {"INPUT_IDS": np.array([1])}, ["OUTPUT_IDS"]))
    gc.collect()
    assert kept() is None
    sys.modules.pop("stepaudio_triton.bls", None)


def test_a_stream_error_reaches_bls_callers_as_an_output_and_other_clients_as_an_error(adapter, monkeypatch):
    """2.51 loses a decoupled model's error responses after the first on their way to a BLS caller."""

    class Sender:
        def __init__(self):
            self.sent = []

        def send(self, response=None, flags=0):
            self.sent.append((response, flags))

    monkeypatch.setattr(adapter.pb_utils, "TRITONSERVER_RESPONSE_COMPLETE_FINAL", 1, raising=False)

    def request(request_id):
        return types.SimpleNamespace(request_id=lambda: request_id, parameters=lambda: "{}",
                                     requested_output_names=lambda: ["OUTPUT_IDS", "ERROR"])

    class Named:
        def __init__(self, name, value):
            self._name, self.value = name, value

        def name(self):
            return self._name

    monkeypatch.setattr(adapter.pb_utils, "Tensor", Named)
    bls_caller, client = Sender(), Sender()
    adapter.send_error(bls_caller, request("stepaudio-bls-" + "a" * 32), ValueError("too many ids"))
    adapter.send_error(client, request("client-7"), ValueError("too many ids"))
    (response, flags), = bls_caller.sent
    assert flags == 1 and response.error is None
    assert [t.value[0].decode() for t in response.output_tensors] == ["[INVALID_ARG] too many ids"]
    (response, flags), = client.sent
    assert flags == 1 and response.error.code == "INVALID_ARG" and response.error.message == "too many ids"


def test_request_cancel_ends_a_stream_another_thread_iterates(adapter, monkeypatch):
    import threading

    from stepaudio.errors import Cancelled

    cancelled = threading.Event()

    class Response:
        def __init__(self, error_output=None):
            self._error_output = error_output

        def has_error(self):
            return False

        def output_tensors(self):
            return ["OUTPUT_IDS"]

        def tensor(self, name):
            if name == "ERROR":
                return None if self._error_output is None else FakeTensor(name, np.array([self._error_output.encode()], object))
            return FakeTensor(name, np.array([7]))

    class Request:
        def __init__(self, model_name, inputs, requested_output_names, request_id):
            self.cancel = any(t.name == "CANCEL" for t in inputs)

        def exec(self, decoupled):
            if self.cancel:
                cancelled.set()
                return iter([])

            def responses():  # ids until the model sees the CANCEL, then its CANCELLED end as the ERROR output
                while not cancelled.wait(0.01):
                    yield Response()
                yield Response("[CANCELLED] stream cancelled by its owner after 3 ids")
            return responses()

    bls = _bls_with_requests(monkeypatch, Request)
    stream = bls.Stream("chat_llm", {"MESSAGES": np.array([b"[]"], object)}, ["OUTPUT_IDS"], cancellable=True)
    outcome = []

    def consume():
        try:
            for _ in stream:
                pass
        except Cancelled as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    stream.request_cancel()
    consumer.join(5)
    assert not consumer.is_alive() and outcome and "cancelled by its owner" in str(outcome[0])
    sys.modules.pop("stepaudio_triton.bls", None)
