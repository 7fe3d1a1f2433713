"""The served real-time voice session (``realtime_session``): one Triton sequence per conversation.

Each request of the sequence carries an audio chunk. The session runs it through the served ``vad`` (over BLS, same
correlation id), feeds the VAD frames to ``stepaudio.realtime.RealtimeController`` and carries out its actions:

- a reply runs on its own thread: ``tokenizer`` on the turn's audio → ``chat_llm`` (the text history + this turn's
  audio ids; streamed text) and ``chat_llm`` in ASR mode (the turn's transcript, which joins the history in place
  of the audio) → ``tts_stream`` per completed sentence → audio deltas;
- a speculative reply (started at the user's first pause) sends nothing: its events wait in the reply until the
  controller commits it at end of turn (then they leave at once and the rest streams live) or discards it (its
  streams are cancelled, its events dropped — it is never heard);
- barge-in (speech while the bot replies): from that moment no event of the reply is sent (``response.cancelled``
  is its last), and its chat/TTS streams are cancelled (CANCEL with the stream's token).

Responses: the model is decoupled, and a session's events go out on the response sender of its latest request;
when the next chunk arrives, the previous sender gets its final flag. Over one gRPC stream the client therefore sees
one ordered stream of events. Each response carries ``EVENT`` (JSON) and, for ``response.audio.delta``, ``WAVEFORM``.
The events are listed in docs/realtime.md.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio.errors import Cancelled
from stepaudio.realtime import (
    CancelReply,
    CommitReply,
    DiscardReply,
    RealtimeConfig,
    RealtimeController,
    SpeechStarted,
    SpeechStopped,
    StartReply,
    VadFrame,
)
from stepaudio.realtime.turns import (
    CancelResponse,
    ClearAudio,
    CommitAudio,
    CreateResponse,
    PendingInput,
    TruncateReply,
    UpdateSession,
    UserText,
    heard_text,
    parse_control,
)
from stepaudio.realtime.vad import WINDOW_SECONDS
from stepaudio_contract import errors
from stepaudio_contract.client import string
from stepaudio_contract.limits import REALTIME_MAX_RATE, REALTIME_MIN_RATE
from stepaudio_triton import bls
from stepaudio_triton.adapter import (
    error_response,
    optional_input,
    optional_scalar,
    optional_string,
    parameter,
    rendered_parameter,
    required_input,
)
from stepaudio_triton.chat_turn import ChatTurn, ReplyVoice, TurnModels, TurnRequest
from stepaudio_triton.sequences import SequenceControls
from stepaudio_triton.threads import BoundedThreads

TURN_PAD_SECONDS = 0.1  # audio kept on each side of the VAD's speech span for the reply
KEPT_REPLIES = 8  # replies a client may still truncate (conversation.item.truncate)
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


@dataclass
class ServiceConfig:
    vad_model: str
    models: TurnModels  # what a reply calls (chat_turn.ChatTurn)
    default_speaker: str
    max_sentence_chars: int
    max_chunk_seconds: float
    keepalive_s: float  # a session quiet this long answers its next chunk with an empty response
    max_history_turns: int
    chat_max_new_tokens: int  # cap and default per reply
    tts_max_new_tokens: int  # cap and default per sentence
    controller: RealtimeConfig

    @classmethod
    def from_config(cls, config: dict) -> ServiceConfig:
        controller = RealtimeConfig(
            end_of_turn_ms=rendered_parameter(config, "end_of_turn_ms", float),
            pause_ms=rendered_parameter(config, "pause_ms", float),
            speculation=rendered_parameter(config, "speculation", bool),
            max_turn_seconds=rendered_parameter(config, "max_turn_seconds", float),
            max_session_seconds=rendered_parameter(config, "max_session_seconds", float),
            idle_timeout_seconds=rendered_parameter(config, "idle_timeout_s", float)).validate()
        models = TurnModels(tokenizer=parameter(config, "tokenizer_model", "tokenizer"),
                            chat=parameter(config, "chat_model", "chat_llm"),
                            speech_stream=parameter(config, "tts_model", "tts_stream"))
        return cls(parameter(config, "vad_model", "vad"), models,
                   rendered_parameter(config, "default_speaker"), rendered_parameter(config, "max_sentence_chars", int),
                   rendered_parameter(config, "max_chunk_seconds", float),
                   rendered_parameter(config, "keepalive_s", float),
                   rendered_parameter(config, "max_history_turns", int),
                   rendered_parameter(config, "chat_max_new_tokens", int),
                   rendered_parameter(config, "tts_max_new_tokens", int), controller)


@dataclass(frozen=True)
class SessionOptions:
    """What a client chooses on START (every field optional)."""

    sample_rate: int
    speaker: str
    seed: int | None
    speculation: bool
    max_new_tokens: int
    tts_max_new_tokens: int

    @classmethod
    def from_request(cls, request, service: ServiceConfig) -> SessionOptions:
        rate = optional_scalar(request, "SAMPLE_RATE", int)
        if rate is None:
            raise ValueError("the START request of a session must carry SAMPLE_RATE")
        if not REALTIME_MIN_RATE <= rate <= REALTIME_MAX_RATE:
            raise ValueError(f"SAMPLE_RATE must be {REALTIME_MIN_RATE}..{REALTIME_MAX_RATE} Hz for a real-time session, "
                             f"got {rate}")
        speculation = optional_scalar(request, "SPECULATION", bool)
        max_new = optional_scalar(request, "MAX_NEW_TOKENS", int)
        tts_max_new = optional_scalar(request, "TTS_MAX_NEW_TOKENS", int)
        for name, value, cap in (("MAX_NEW_TOKENS", max_new, service.chat_max_new_tokens),
                                 ("TTS_MAX_NEW_TOKENS", tts_max_new, service.tts_max_new_tokens)):
            if value is not None and not 1 <= value <= cap:
                raise ValueError(f"{name} must be 1..{cap}, got {value}")
        return cls(rate, optional_string(request, "SPEAKER") or service.default_speaker,
                   optional_scalar(request, "SEED", int),
                   service.controller.speculation if speculation is None else speculation,
                   max_new or service.chat_max_new_tokens, tts_max_new or service.tts_max_new_tokens)


class AudioBuffer:
    """The session's audio at its own rate, trimmed to what a reply can still need."""

    def __init__(self, rate: int):
        self.rate, self.offset, self.data = rate, 0, np.zeros(0, np.float32)

    def append(self, chunk: np.ndarray) -> None:
        self.data = np.concatenate([self.data, chunk.astype(np.float32, copy=False)])

    def slice(self, start_s: float, end_s: float) -> np.ndarray:
        start = max(int(start_s * self.rate) - self.offset, 0)
        return self.data[start:max(int(end_s * self.rate) - self.offset, start)].copy()

    def trim_before(self, t_s: float) -> None:
        cut = int(t_s * self.rate) - self.offset
        if cut > 0:
            self.data, self.offset = self.data[cut:], self.offset + cut


class Metrics:
    """Counters on Triton's metrics endpoint (for tests, the bench and operators)."""

    def __init__(self, model: str):
        self.replies = pb_utils.MetricFamily(name="stepaudio_realtime_replies_total", kind=pb_utils.MetricFamily.COUNTER,
                                             description="replies by outcome: committed speculative, discarded "
                                                         "speculative, direct, completed, cancelled (barge-in), failed")
        self.discarded_seconds = pb_utils.MetricFamily(
            name="stepaudio_realtime_discarded_reply_seconds_total", kind=pb_utils.MetricFamily.COUNTER,
            description="wall seconds discarded speculative replies kept a worker (and the models it called) busy")
        self.cancelled = pb_utils.MetricFamily(name="stepaudio_realtime_cancelled_streams_total",
                                               kind=pb_utils.MetricFamily.COUNTER,
                                               description="called streams a session cancelled and saw end cancelled")
        self._metrics: dict = {}
        self.model = model

    def count(self, family, value: float = 1, **labels) -> None:
        key = (id(family), tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = family.Metric(labels={"model": self.model, **labels})
        self._metrics[key].increment(value)

    def close(self) -> None:
        self._metrics.clear()
        del self.replies, self.cancelled, self.discarded_seconds


class Reply:
    """One reply's worker state. ``stopped``: discarded or cancelled — nothing more of it is sent."""

    def __init__(self, action: StartReply, previous: Reply | None, text: str = "", audio: bool = True,
                 speak: bool = True, instructions: str | None = None):
        self.id = action.reply_id
        self.response_id = "resp_" + secrets.token_hex(8)
        self.action, self.previous = action, previous
        # What it answers (the turn's audio span and/or typed text) and how (speech or text only; the system turn).
        self.user_text, self.audio, self.speak, self.instructions = text, audio, speak, instructions
        self.sentences: list[tuple[str, float]] = []  # each spoken sentence and its audio seconds
        self.heard_s: float | None = None  # the client played only this much (conversation.item.truncate)
        self.history_entry: dict | None = None
        self.audio_ids, self.text_deltas = 0, 0
        self.committed = not action.speculative
        self.stopped = threading.Event()
        self.finished = threading.Event()  # the worker has ended
        self.pending: list[tuple[dict, np.ndarray | None]] = []  # events held while speculative
        self.text, self.user_transcript, self.done_sent, self.failed = "", "", False, False
        self.turn: ChatTurn | None = None  # the chat turn, once the worker has built it
        self.lock = threading.Lock()
        self.started_at = time.monotonic()

    def attach(self, turn: ChatTurn) -> ChatTurn:
        with self.lock:
            self.turn = turn
            stopped = self.stopped.is_set()
        if stopped:
            turn.stop()
        return turn

    def stop(self) -> None:
        """Stop sending at once; ask the called models to end the turn's streams (the worker sees them end)."""
        self.stopped.set()
        with self.lock:
            turn = self.turn
        if turn is not None:
            turn.stop()


class Session:
    def __init__(self, service: RealtimeService, correlation_id: int, options: SessionOptions):
        self.service, self.correlation_id, self.options = service, correlation_id, options
        self.controller = RealtimeController(
            RealtimeConfig(**{**service.config.controller.__dict__, "speculation": options.speculation}))
        self.audio = AudioBuffer(options.sample_rate)
        self.history: list[dict] = []
        self.lock = threading.RLock()
        self.sender = None
        self.sent_at = time.monotonic()  # the last response with an event (or a keep-alive)
        self.reply: Reply | None = None
        self.last_reply: Reply | None = None
        self.vad_started = False
        self.closed = False
        self.manual = False  # turn detection off: the client commits its turns
        self.prefix_pad_s = TURN_PAD_SECONDS  # audio kept before the detected speech (prefix_padding_ms)
        self.instructions: str | None = None  # the chat's system turn
        self.pending = PendingInput()
        self.replies: dict[str, Reply] = {}  # by response id, the last KEPT_REPLIES

    # ---- output ------------------------------------------------------------------------------------------------
    def attach(self, sender) -> None:
        """A new request: its sender carries the events from now on; the previous one is closed."""
        with self.lock:
            previous, self.sender = self.sender, sender
            if previous is not None:
                self._send_on(previous, None, final=True)

    def send(self, event: dict, waveform: np.ndarray | None = None) -> None:
        with self.lock:
            if self.sender is not None:
                self._send_on(self.sender, (event, waveform))

    def keep_alive(self) -> None:
        """An empty response on the current request if nothing was sent for ``keepalive_s``: a client reading the
        stream sees the session is alive while the user streams silence (the empty final responses that end each
        request reach no gRPC client that did not ask for them; the gateway's asyncio client cannot ask)."""
        with self.lock:
            if self.sender is not None and time.monotonic() - self.sent_at >= self.service.config.keepalive_s:
                self._send_on(self.sender, ())

    def _send_on(self, sender, item, final: bool = False) -> None:
        """``item``: (event, waveform), ``None`` for the bare final flag, ``()`` for an empty keep-alive response."""
        try:
            if item is None:
                sender.send(flags=_FINAL)
                return
            outputs = []
            if item:
                event, waveform = item
                outputs = [pb_utils.Tensor("EVENT", string(json.dumps(event, ensure_ascii=False)))]
                if waveform is not None:
                    outputs.append(pb_utils.Tensor("WAVEFORM", np.ascontiguousarray(waveform, dtype=np.float32)))
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs), flags=_FINAL if final else 0)
            self.sent_at = time.monotonic()
        except Exception:  # noqa: BLE001 - the client went away: the session ends by END or idle timeout
            if sender is self.sender:
                self.sender = None

    def emit(self, reply: Reply, event: dict, waveform: np.ndarray | None = None) -> None:
        """A reply's event: dropped once the reply is stopped, held while it is speculative, else sent."""
        with self.lock:
            if reply.stopped.is_set():
                return
            if not reply.committed:
                reply.pending.append((event, waveform))
                return
            self.send(event, waveform)

    # ---- input -------------------------------------------------------------------------------------------------
    def now_s(self) -> float:
        """Session audio time: the end of the audio received so far."""
        return (self.audio.offset + self.audio.data.shape[0]) / self.audio.rate

    def feed(self, chunk: np.ndarray, end: bool) -> None:
        if self.manual or (chunk.shape[0] == 0 and self.vad_started and not end):
            with self.lock:  # no VAD: the client's commits make the turns
                self.audio.append(chunk)
                self.controller.touch()
                if self.reply is None:
                    keep = self.pending.buffer_start_s if self.pending.audio_span is None else self.pending.audio_span[0]
                    self.audio.trim_before(keep - 1.0)
            return
        start, self.vad_started = not self.vad_started, True
        got = bls.call(self.service.config.vad_model,
                       {"AUDIO": chunk[None].astype(np.float32),
                        "SAMPLE_RATE": np.array([[self.options.sample_rate]], dtype=np.int32)},
                       ["PROBABILITY", "FIRST_WINDOW"], correlation_id=self.correlation_id, start=start, end=end)
        first = int(got["FIRST_WINDOW"].reshape(-1)[0])
        with self.lock:
            self.audio.append(chunk)
            for i, probability in enumerate(got["PROBABILITY"].reshape(-1)):
                for action in self.controller.on_frame(VadFrame((first + i) * WINDOW_SECONDS, float(probability))):
                    self._act(action)
            if self.reply is None and self.controller.state.value == "silence":
                keep = (first + got["PROBABILITY"].size) * WINDOW_SECONDS
                if self.pending.audio_span is not None:  # a committed turn waits for the client's response.create
                    keep = min(keep, self.pending.audio_span[0])
                self.audio.trim_before(max(0.0, keep - 1.0))

    def _act(self, action) -> None:
        metrics = self.service.metrics
        if isinstance(action, SpeechStarted):
            self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": round(action.audio_start_s * 1000)})
        elif isinstance(action, SpeechStopped):
            self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": round(action.audio_end_s * 1000),
                       "audio_start_ms": round(action.audio_start_s * 1000)})
            if not self.controller.config.create_response:  # the turn waits for the client's response.create
                self.pending.add_audio((action.audio_start_s, action.audio_end_s))
        elif isinstance(action, StartReply):
            self._start(Reply(action, self.last_reply, text="\n".join(self.pending.texts),
                              instructions=self.instructions))
        elif isinstance(action, CommitReply):
            reply = self.reply
            reply.committed = True
            metrics.count(metrics.replies, outcome="committed")
            self.send(self._created(reply))
            pending, reply.pending = reply.pending, []
            for event, waveform in pending:
                self.send(event, waveform)
            if reply.finished.is_set() and not reply.done_sent:
                self._finish(reply)
        elif isinstance(action, DiscardReply):
            metrics.count(metrics.replies, outcome="discarded")
            reply = self._stop(action.reply_id)
            if reply is not None and reply.user_text:
                self.pending.texts = [reply.user_text]
        elif isinstance(action, CancelReply):
            metrics.count(metrics.replies, outcome="cancelled")
            reply = self._stop(action.reply_id)
            if reply is not None:
                self.send({"type": "response.cancelled", "response_id": reply.response_id, "reason": action.reason})

    def _start(self, reply: Reply) -> None:
        metrics = self.service.metrics
        self.reply = self.last_reply = reply
        self.replies[reply.response_id] = reply
        while len(self.replies) > KEPT_REPLIES:
            del self.replies[next(iter(self.replies))]
        if reply.committed:
            metrics.count(metrics.replies, outcome="direct")
            self.send(self._created(reply))
        if reply.user_text:  # typed turns are this reply's now (a discarded speculation gives them back)
            self.pending.texts = []
        try:
            self.service.workers.submit(lambda: self.service.run_reply(self, reply))
        except Exception as exc:  # noqa: BLE001 - no worker free: this reply fails, the session goes on
            self.emit(reply, {"type": "error", "error": {"type": "server_error", "code": "busy", "message": str(exc)}})
            self.reply_ended(reply, failed=True)

    # ---- the client's control messages (manual and typed turns, response.create/cancel, truncate) --------------
    def control(self, message: str) -> None:
        """One ``CONTROL`` message; a refused one is an ``error`` event (with the protocol's code), the session
        goes on."""
        try:
            with self.lock:
                self._control(parse_control(message))
        except ValueError as exc:
            code = exc.args[1] if len(exc.args) > 1 else "invalid_value"
            self.send({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                                  "message": str(exc.args[0])}})

    def _control(self, control) -> None:
        self.controller.touch()
        if isinstance(control, UpdateSession):
            if control.turn_detection is not None:
                if control.turn_detection.prefix_padding_ms is not None:
                    self.prefix_pad_s = control.turn_detection.prefix_padding_ms / 1000
                self.controller.config = control.turn_detection.controller_config(
                    dataclasses.replace(self.service.config.controller, speculation=self.options.speculation))
            if control.manual is not None and control.manual != self.manual:
                self.manual = control.manual
                self.pending.buffer_start_s = self.now_s()
            if control.instructions is not None:
                self.instructions = control.instructions or None
            if control.speaker is not None:
                self.options = dataclasses.replace(self.options, speaker=control.speaker)
        elif isinstance(control, (CommitAudio, ClearAudio)):
            if not self.manual:
                raise ValueError("with server_vad the server commits the turns; set turn_detection null to commit "
                                 "by hand", "invalid_value")
            if isinstance(control, ClearAudio):
                self.pending.buffer_start_s = self.now_s()
                self.send({"type": "input_audio_buffer.cleared"})
                return
            try:
                start, end = self.pending.commit(self.now_s())
            except ValueError as exc:
                raise ValueError(str(exc), "input_audio_buffer_commit_empty") from None
            self.send({"type": "input_audio_buffer.committed", "audio_start_ms": round(start * 1000),
                       "audio_end_ms": round(end * 1000)})
        elif isinstance(control, UserText):
            self.pending.add_text(control.text)
            self.send({"type": "input_text.committed", "text": control.text})
        elif isinstance(control, CreateResponse):
            if self.reply is not None and self.reply.committed:
                raise ValueError("a response is already in progress", "conversation_already_has_active_response")
            if self.pending.empty() and not self.history:
                raise ValueError("nothing to respond to: commit audio or add a user message first", "invalid_value")
            span, text = self.pending.take()
            action = self.controller.start_reply(*(span or (0.0, 0.0)))
            self._start(Reply(action, self.last_reply, text=text, audio=span is not None, speak=control.audio,
                              instructions=control.instructions or self.instructions))
        elif isinstance(control, CancelResponse):
            action = self.controller.cancel_reply()
            if action is None:
                raise ValueError("no response is in progress", "response_cancel_not_active")
            self._act(action)
        elif isinstance(control, TruncateReply):
            reply = self.replies.get(control.response_id)
            if reply is None:
                raise ValueError(f"no recent response {control.response_id!r}", "item_truncate_invalid_item_id")
            reply.heard_s = control.audio_end_ms / 1000
            heard = heard_text(reply.sentences, reply.heard_s)
            if reply.history_entry is not None:  # already in the history: keep only what was heard
                reply.history_entry["content"] = heard
            self.send({"type": "conversation.item.truncated", "response_id": reply.response_id,
                       "audio_end_ms": round(control.audio_end_ms), "transcript": heard})

    def _created(self, reply: Reply) -> dict:
        return {"type": "response.created", "response": {"id": reply.response_id, "status": "in_progress",
                                                         "speculative": reply.action.speculative}}

    def _stop(self, reply_id: int) -> Reply | None:
        reply = self.reply if self.reply is not None and self.reply.id == reply_id else None
        if reply is not None:
            self.reply = None
            reply.stop()
        return reply

    def reply_ended(self, reply: Reply, failed: bool) -> None:
        """The worker is done; a committed reply ends now, a speculative one when (if) it is committed. A reply
        the user talked over (barge-in) keeps what was said so far in the history."""
        with self.lock:
            reply.failed = failed
            if reply.committed and reply.stopped.is_set():
                self.remember(reply)
            reply.finished.set()
            if reply.committed and not reply.stopped.is_set():
                self._finish(reply)

    def _finish(self, reply: Reply) -> None:
        status = "failed" if reply.failed else "completed"
        reply.done_sent = True
        if not reply.failed:
            self.remember(reply)
        self.service.metrics.count(self.service.metrics.replies, outcome=status)
        self.send({"type": "response.done", "response": {
            "id": reply.response_id, "status": status, "output_transcript": reply.text,
            "user_transcript": reply.user_transcript, "history_turns": len(self.history),
            "usage": {"input_audio_tokens": reply.audio_ids, "output_text_tokens": reply.text_deltas,
                      "output_audio_seconds": round(sum(seconds for _, seconds in reply.sentences), 3)}}})
        if self.reply is reply:
            self.reply = None
        self.controller.on_reply_finished(reply.id)

    def remember(self, reply: Reply) -> None:
        """A committed reply joins the text history: the user's transcript and what the bot said (up to a barge-in)."""
        with self.lock:
            if reply.user_transcript:
                self.history.append({"role": "user", "content": reply.user_transcript})
            text = reply.text if reply.heard_s is None else heard_text(reply.sentences, reply.heard_s)
            if text:
                reply.history_entry = {"role": "assistant", "content": text}
                self.history.append(reply.history_entry)
            del self.history[:-self.service.config.max_history_turns]

    def close(self, reason: str, error: bool = False) -> None:
        """END, idle timeout or shutdown: stop the reply, tell the client, end its stream, free the VAD sequence."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.reply is not None:
                self.reply.stop()
                self.reply = None
            if error:
                self.send({"type": "error", "error": {"type": "session_error", "code": "session_expired", "message": reason}})
            self.send({"type": "session.closed", "reason": reason})
            if self.sender is not None:
                self._send_on(self.sender, None, final=True)
                self.sender = None
        if self.vad_started and reason != "ended":
            try:  # the client's END went to the VAD with the last chunk; otherwise end the VAD's sequence here
                bls.call(self.service.config.vad_model, {"AUDIO": np.zeros((1, 0), np.float32)}, ["PROBABILITY"],
                         correlation_id=self.correlation_id, end=True)
            except Exception:  # noqa: BLE001 - the VAD frees an idle sequence itself
                pass


class RealtimeService:
    """What ``realtime_session/1/model.py`` delegates to: sessions by correlation id, reply workers."""

    def __init__(self, config: ServiceConfig, table, metrics: Metrics, max_sessions: int):
        self.config, self.sessions, self.metrics = config, table, metrics
        self.workers = BoundedThreads(2 * max_sessions, "realtime_session-reply")
        self.asr = ThreadPoolExecutor(max_sessions, thread_name_prefix="realtime_session-asr")

    def close(self) -> None:
        self.sessions.close_all()
        self.workers.close()
        self.asr.shutdown(wait=True, cancel_futures=True)

    def handle(self, request) -> None:
        sender = request.get_response_sender()
        controls = None
        try:
            controls = SequenceControls.from_request(request)
            if controls.start:
                options = SessionOptions.from_request(request, self.config)
                session = self.sessions.open(controls.correlation_id,
                                             lambda: Session(self, controls.correlation_id, options))
            else:
                session = self.sessions.get(controls.correlation_id)
                rate = optional_scalar(request, "SAMPLE_RATE", int)
                if rate is not None and rate != session.options.sample_rate:
                    raise ValueError(f"SAMPLE_RATE {rate} differs from the session's {session.options.sample_rate}")
            chunk = required_input(request, "AUDIO")
            if chunk.ndim != 2 or chunk.shape[0] != 1:
                raise ValueError(f"AUDIO must be [1, samples] (batch 1), got shape {list(chunk.shape)}")
            if chunk.shape[1] > self.config.max_chunk_seconds * session.options.sample_rate:
                raise ValueError(f"an AUDIO chunk may hold at most {self.config.max_chunk_seconds:g} s; "
                                 "send the audio as it arrives")
            if optional_input(request, "SPECULATION") is not None and not controls.start:
                raise ValueError("SPECULATION is chosen on START")
            control = optional_string(request, "CONTROL")
        except Exception as exc:  # noqa: BLE001 - this request fails; a live session goes on
            sender.send(error_response(exc, request), flags=_FINAL)
            if controls is not None and controls.end:
                self.sessions.close(controls.correlation_id)
            return
        session.attach(sender)
        if controls.start:
            session.send({"type": "session.created", "session": {
                "sample_rate": session.options.sample_rate, "speculation": session.options.speculation,
                "end_of_turn_ms": self.config.controller.end_of_turn_ms, "pause_ms": self.config.controller.pause_ms,
                "speaker": session.options.speaker}})
        if control:  # before the chunk: a START's settings (turn detection) apply to its own audio
            session.control(control)
        try:
            session.feed(chunk[0], controls.end)
        except Exception as exc:  # noqa: BLE001 - a failed VAD call: the client hears of it, the session goes on
            session.send({"type": "error", "error": {"type": "server_error", "code": errors.code_name(exc),
                                                     "message": errors.client_message(exc)}})
        if controls.end:
            session.close("ended")
            self.sessions.close(controls.correlation_id)
            return
        expired = session.controller.expired()
        if not expired:
            session.keep_alive()
        if expired:
            session.close(expired, error=True)
            self.sessions.close(controls.correlation_id)

    # ---- one reply, on a worker thread -------------------------------------------------------------------------
    def run_reply(self, session: Session, reply: Reply) -> None:
        failed = False
        try:
            if reply.previous is not None:
                reply.previous.finished.wait(30)  # its transcript joins the history first
            self._generate(session, reply)
        except Cancelled:
            pass
        except Exception as exc:  # noqa: BLE001 - reported to the client as this reply's error
            failed = True
            if not reply.stopped.is_set():
                session.emit(reply, {"type": "error", "error": {"type": "server_error", "code": errors.code_name(exc),
                                                                 "message": errors.client_message(exc)}})
        finally:
            turn = reply.turn
            transcribing = turn is not None and turn.transcribing
            if not transcribing and not reply.user_transcript:  # a typed turn cut short
                reply.user_transcript = reply.user_text
            if reply.committed and transcribing and not reply.user_transcript:
                try:  # a barge-in: the user's words still join the history
                    reply.user_transcript = turn.transcript(timeout_s=60)
                except Exception:  # noqa: BLE001 - no transcript: the turn stays out of the history
                    pass
            session.reply_ended(reply, failed)  # the next reply may start on the history now
            if reply.stopped.is_set() and turn is not None:
                turn.drain()  # each stream to its final response (this thread read them)
                for model in turn.cancelled_models:
                    self.metrics.count(self.metrics.cancelled, stream=model)
                if not reply.committed:
                    self.metrics.count(self.metrics.discarded_seconds, time.monotonic() - reply.started_at)

    def _generate(self, session: Session, reply: Reply) -> None:
        config, options = self.config, session.options
        with session.lock:
            audio = session.audio.slice(reply.action.audio_start_s - session.prefix_pad_s,
                                        reply.action.audio_end_s + TURN_PAD_SECONDS)
            history = list(session.history)
        if reply.instructions:
            history = [{"role": "system", "content": reply.instructions}] + history
        if reply.user_text:  # a typed turn (with spoken audio, both are the user's one turn)
            history.append({"role": "user", "content": reply.user_text})
        sampling = {"MAX_NEW_TOKENS": np.array([options.max_new_tokens], dtype=np.int32)}
        if options.seed is not None:
            sampling["SEED"] = np.array([options.seed], dtype=np.int64)
        voice = ReplyVoice(speaker=options.speaker, seed=options.seed, max_new_tokens=options.tts_max_new_tokens)
        request = TurnRequest(history, audio=audio[None] if reply.audio else None,
                              sample_rate=options.sample_rate if reply.audio else None, sampling=sampling,
                              voice=voice if reply.speak else None)
        turn = reply.attach(ChatTurn(bls.transport, config.models, request, self.asr))
        turn.start()  # Cancelled if the reply was stopped meanwhile
        if turn.audio_ids is not None:
            reply.audio_ids = int(turn.audio_ids.size)
        for delta, sentences in turn.reply(config.max_sentence_chars):
            if delta:
                reply.text += delta
                reply.text_deltas += 1
                session.emit(reply, {"type": "response.audio_transcript.delta", "response_id": reply.response_id,
                                     "delta": delta})
            for sentence in sentences:
                self._speak(session, reply, turn, sentence)
        if not turn.transcribing:
            reply.user_transcript = reply.user_text
            return
        spoken = turn.transcript()
        reply.user_transcript = "\n".join(part for part in (reply.user_text, spoken) if part)
        session.emit(reply, {"type": "conversation.item.input_audio_transcription.completed",
                             "response_id": reply.response_id, "transcript": spoken})

    def _speak(self, session: Session, reply: Reply, turn: ChatTurn, sentence: str) -> None:
        if reply.stopped.is_set():
            raise Cancelled("reply stopped")
        if not reply.speak:  # a text-only response: the sentence joins what was "heard" at once
            reply.sentences.append((sentence, 0.0))
            return
        # A barge-in stops the turn: tts_stream gets CANCEL with the stream's token and stops within one decode step.
        chunks = turn.speak(sentence)
        reply.sentences.append((sentence, 0.0))
        for wave, rate in chunks:
            reply.sentences[-1] = (sentence, reply.sentences[-1][1] + wave.size / rate)
            session.emit(reply, {"type": "response.audio.delta", "response_id": reply.response_id,
                                 "sample_rate": rate}, wave)
