"""One spoken/typed chat turn over the served models, written once for ``voice_chat``, ``voice_chat_stream``,
``chat_reply`` (``ensemble_chat``) and ``realtime_session`` (the gateway's chat completions ride on
``voice_chat_stream``):

    tokenizer (the turn's audio → ids) → chat_llm in ASR mode (the transcript that joins the text history in place
    of the audio, on a pool thread) ‖ chat_llm (the reply, streamed) → whole sentences → TTS per sentence:
    ``tts_stream`` (chunks) or ``ensemble_tts`` (one waveform).

Triton-free (the TensorRT-LLM BLS ``lib/decode.py`` split): every call goes through a ``Transport``.
``stepaudio_triton.bls.transport`` is the served one; tests drive the turn with fakes. A turn can be stopped from
any thread (barge-in, a client cancel): each stream it opened is asked to end and the thread reading it sees the
end within one of the called model's steps.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from stepaudio.chat.speech import SentenceSplitter
from stepaudio.errors import Cancelled
from stepaudio_contract.client import string


class TurnStream(Protocol):
    """A decoupled model's responses (``bls.Stream``)."""

    model: str

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def request_cancel(self) -> None:
        """Ask the model to end the stream (any thread, never raises)."""


class Transport(Protocol):
    def call(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], correlation_id: int | None = None,
             start: bool = False, end: bool = False) -> dict[str, np.ndarray]:
        """One request, one response; ``correlation_id`` with ``start`` / ``end`` for a sequence model."""

    def stream(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
               cancellable: bool = False) -> TurnStream: ...


@dataclass(frozen=True)
class TurnModels:
    """The served models a turn calls (names from the calling model's config)."""

    tokenizer: str = "tokenizer"
    chat: str = "chat_llm"
    speech: str = "ensemble_tts"  # one waveform per sentence
    speech_stream: str = "tts_stream"  # audio chunks per sentence


@dataclass
class ReplyVoice:
    """How the reply speaks: a preset ``speaker`` or a cloned voice (``prompt``: PROMPT_AUDIO, PROMPT_SAMPLE_RATE,
    PROMPT_TEXT, all three), and the per-sentence TTS settings."""

    speaker: str | None = None
    prompt: dict[str, np.ndarray] = field(default_factory=dict)
    prompt_names: tuple[str, ...] = ()  # what a whole prompt voice holds
    seed: int | None = None
    max_new_tokens: int | None = None

    def validate(self) -> ReplyVoice:
        # Checked before the chat runs, so a bad voice costs no generation (tts_frontend checks the audio itself).
        if self.prompt and set(self.prompt) != set(self.prompt_names):
            raise ValueError(f"a prompt voice needs all of {', '.join(self.prompt_names)}")
        if self.prompt and self.speaker:
            raise ValueError("give either SPEAKER or a prompt voice (PROMPT_AUDIO ...), not both")
        if not self.prompt and not self.speaker:
            raise ValueError("the reply needs a SPEAKER or a prompt voice")
        return self

    def tts_inputs(self, sentence: str, batched: bool) -> dict[str, np.ndarray]:
        """One sentence's TTS request; ``batched`` adds ``ensemble_tts``'s batch dimension of 1."""
        inputs = dict(self.prompt)
        if self.speaker:
            inputs["SPEAKER"] = string(self.speaker)
        inputs["TEXT"] = string(sentence)
        if batched:
            inputs = {name: value.reshape(1, -1) for name, value in inputs.items()}
        shape = (1, 1) if batched else (1,)
        if self.seed is not None:
            inputs["SEED"] = np.full(shape, self.seed, dtype=np.int64)
        if self.max_new_tokens is not None:
            inputs["MAX_NEW_TOKENS"] = np.full(shape, self.max_new_tokens, dtype=np.int32)
        return inputs


@dataclass
class TurnRequest:
    """What a turn answers: the text turns (history + this turn's text, chat_llm's MESSAGES) and this turn's audio,
    as samples (``audio`` [channels, samples] + ``sample_rate``) or already tokenized (``audio_ids``)."""

    messages: list[dict]
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    audio_ids: np.ndarray | None = None
    sampling: dict[str, np.ndarray] = field(default_factory=dict)  # chat_llm's sampling inputs, each shaped [1]
    voice: ReplyVoice | None = None  # None: a text reply, no TTS request at all

    def validate(self) -> TurnRequest:
        if self.audio is not None:
            if self.sample_rate is None:
                raise ValueError("AUDIO needs SAMPLE_RATE")
            if self.audio.ndim != 2:
                raise ValueError(f"AUDIO must be [channels, samples], got shape {list(self.audio.shape)}")
            if self.audio_ids is not None:
                raise ValueError("give the turn's audio as samples or as ids, not both")
        if self.voice is not None:
            self.voice.validate()
        return self


def text_delta(response: dict[str, np.ndarray]) -> str:
    return response["TEXT_DELTA"].reshape(-1)[0].decode()


class ChatTurn:
    """One turn: ``start()``, then ``reply()`` (or ``deltas()``), ``speak`` / ``speak_whole`` per sentence, and
    ``transcript()``. ``stop()`` from any thread; ``drain()`` on the thread that ran the turn, once it stopped."""

    def __init__(self, transport: Transport, models: TurnModels, request: TurnRequest, asr_pool: Executor):
        self.transport, self.models, self.request = transport, models, request.validate()
        self.asr_pool = asr_pool
        self.audio_ids = request.audio_ids
        self.stopped = threading.Event()
        self.cancelled_models: list[str] = []  # called models that confirmed a stop (their CANCELLED end)
        self._streams: list[TurnStream] = []
        self._lock = threading.Lock()
        self._transcript: Future | None = None
        self._reply: TurnStream | None = None

    # ---- the chat --------------------------------------------------------------------------------------------
    def start(self) -> ChatTurn:
        """Tokenize the turn's audio, start its transcription and the reply stream."""
        request = self.request
        if request.audio is not None:
            ids = self.transport.call(self.models.tokenizer, {
                "AUDIO": request.audio[None].astype(np.float32, copy=False),
                "SAMPLE_RATE": np.array([[request.sample_rate]], dtype=np.int32)}, ["AUDIO_IDS"])["AUDIO_IDS"]
            self.audio_ids = ids[0]
            self._raise_if_stopped()
        chat_inputs = {"MESSAGES": string(json.dumps(request.messages, ensure_ascii=False)), **request.sampling}
        if self.audio_ids is not None:
            self._transcript = self.asr_pool.submit(self._transcribe, self.audio_ids)
            chat_inputs["AUDIO_IDS"] = self.audio_ids
        self._reply = self._open(self.models.chat, chat_inputs, ["TEXT_DELTA"])
        return self

    def deltas(self) -> Iterator[str]:
        """The reply's text deltas as chat_llm writes them; ``Cancelled`` once the turn is stopped."""
        for response in self._responses(self._reply):
            self._raise_if_stopped()
            yield text_delta(response)

    def reply(self, max_sentence_chars: int) -> Iterator[tuple[str, list[str]]]:
        """(text delta, the reply sentences it completed); a last ("", the rest) flushes the unfinished sentence."""
        splitter = SentenceSplitter(max_sentence_chars)
        for delta in self.deltas():
            yield delta, splitter.feed(delta)
        if rest := splitter.flush():
            yield "", rest

    def _transcribe(self, audio_ids: np.ndarray) -> str:
        """Not stopped with the turn: the user's words belong in the history even when the reply is cut short."""
        parts = self.transport.stream(self.models.chat, {"MODE": string("asr"), "AUDIO_IDS": audio_ids},
                                      ["TEXT_DELTA"], cancellable=True)
        return "".join(text_delta(response) for response in parts)

    @property
    def transcribing(self) -> bool:
        """Whether the turn has audio whose transcript ``transcript()`` waits for."""
        return self._transcript is not None

    def transcript(self, timeout_s: float | None = None) -> str:
        """The user's spoken words ("" for a typed turn); waits for the ASR stream."""
        return self._transcript.result(timeout_s) if self._transcript is not None else ""

    # ---- the reply's speech ----------------------------------------------------------------------------------
    def speak(self, sentence: str) -> Iterator[tuple[np.ndarray, int]]:
        """One sentence as ``tts_stream`` chunks: (waveform, sample rate)."""
        self._raise_if_stopped()
        stream = self._open(self.models.speech_stream, self._voice.tts_inputs(sentence, batched=False),
                            ["WAVEFORM", "SAMPLE_RATE"])
        for chunk in self._responses(stream):
            self._raise_if_stopped()
            yield chunk["WAVEFORM"], int(chunk["SAMPLE_RATE"].reshape(-1)[0])

    def speak_whole(self, sentence: str) -> tuple[np.ndarray, int]:
        """One sentence through ``ensemble_tts``: (waveform, sample rate)."""
        self._raise_if_stopped()
        out = self.transport.call(self.models.speech, self._voice.tts_inputs(sentence, batched=True),
                                  ["WAVEFORM", "SAMPLE_RATE"])
        return out["WAVEFORM"].reshape(-1), int(out["SAMPLE_RATE"].reshape(-1)[0])

    @property
    def _voice(self) -> ReplyVoice:
        if self.request.voice is None:
            raise ValueError("this turn has a text reply: no voice to speak it")
        return self.request.voice

    # ---- streams and stopping --------------------------------------------------------------------------------
    def _open(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> TurnStream:
        stream = self.transport.stream(model, inputs, outputs, cancellable=True)
        with self._lock:
            self._streams.append(stream)
            stopped = self.stopped.is_set()
        if stopped:  # stopped while the request was on its way
            stream.request_cancel()
        return stream

    def _responses(self, stream: TurnStream) -> Iterator[dict[str, np.ndarray]]:
        """A stream's responses; a CANCELLED end is recorded (the called model confirmed the stop)."""
        try:
            yield from stream
        except Cancelled:
            self.cancelled_models.append(stream.model)
            raise

    def _raise_if_stopped(self) -> None:
        if self.stopped.is_set():
            raise Cancelled("turn stopped")

    def stop(self) -> None:
        """Stop the turn (any thread, never raises): every open stream is asked to end."""
        self.stopped.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.request_cancel()

    def drain(self) -> None:
        """After ``stop``, on the thread that ran the turn: read each stream to its end, so that the called models
        have freed their slots when this returns (a stopped stream's errors do not matter)."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.request_cancel()
            try:
                for _ in self._responses(stream):
                    pass
            except Exception:  # noqa: BLE001 - see the docstring
                pass
