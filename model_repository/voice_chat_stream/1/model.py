"""voice_chat_stream: one chat turn, streamed. Text deltas leave as the chat model writes them; each reply
sentence goes to ``tts_stream`` as soon as it is complete and its audio chunks follow (sentence order kept).
A last response carries USER_TRANSCRIPT (for an audio turn) with the final flag. Cancelling stops the chat stream:
the client's own cancel, or (where compat.py needs ``cancel_input``) a CANCEL request naming the turn's
``cancel_token``, which the gateway sends instead of cancelling a running gRPC call (``in_band_grpc_cancel``).
"""

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from stepaudio.chat.speech import SentenceSplitter
from stepaudio.errors import Cancelled
from stepaudio_triton import bls
from stepaudio_triton.adapter import (
    Outputs,
    parse_config,
    rendered_parameter,
    send_error,
    serve_decoupled,
    string_tensor,
)
from stepaudio_triton.adapter import send as send_response  # its own `send` sends under a lock
from stepaudio_triton.generation import CancelFlag, LiveStreams, answer_cancel, cancel_token
from stepaudio_triton.threads import BoundedThreads
from stepaudio_triton.voice_chat import ChatGraph, ChatRun, ChatTurnInputs

_DONE = object()


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        bls.configure(config)
        self.outputs = Outputs(config)
        self.graph = ChatGraph.speaking_from_config(config)
        limit = rendered_parameter(config, "max_streams", int)
        self.pool = ThreadPoolExecutor(limit, thread_name_prefix="voice_chat_stream-asr")
        self.turns = BoundedThreads(limit, "voice_chat_stream")
        # One speaker per running turn; twice the room because a finished speaker frees its slot a moment after
        # its turn may already have ended and been replaced.
        self.speakers = BoundedThreads(2 * limit, "voice_chat_stream-tts")
        self.live = LiveStreams()  # running turns by cancel token

    def execute(self, requests):
        for request in requests:
            if answer_cancel(request, self.live):
                continue
            serve_decoupled(request, self.turns, self._turn)
        return None

    def finalize(self):
        self.turns.close()
        self.speakers.close()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _turn(self, request):
        sender = request.get_response_sender()
        send_lock = threading.Lock()

        def send(outputs, final=False):
            with send_lock:
                send_response(sender, request, outputs, final)

        run = token = None
        cancelled = CancelFlag()
        sentences: queue.Queue = queue.Queue()
        speak_errors: list = []
        spoken = threading.Event()
        try:
            token = cancel_token(request)
            if token is not None:
                self.live.add(token, cancelled)
            run = ChatRun(self.graph, ChatTurnInputs.from_request(request, self.graph), self.pool)
            if run.inputs.reply_audio:
                self.speakers.submit(lambda: self._speak(run, sentences, send, sender, speak_errors, spoken, cancelled))
            else:  # text only: no speaker, no TTS request
                spoken.set()
            splitter = SentenceSplitter(self.graph.max_sentence_chars)
            for delta in run.reply_deltas():
                if sender.is_cancelled() or cancelled.is_set():  # checked at every delta: stops within one step
                    run.cancel()
                    break
                send([string_tensor("TEXT_DELTA", delta)])
                for sentence in splitter.feed(delta):
                    sentences.put(sentence)
            for sentence in splitter.flush():
                sentences.put(sentence)
            sentences.put(_DONE)
            spoken.wait()
            if speak_errors:
                raise speak_errors[0]
            if cancelled.is_set():  # after the speaker stopped: nothing is sent after this error
                raise Cancelled("turn cancelled by its owner")
            send([string_tensor("USER_TRANSCRIPT", run.transcript())], final=True)
        except Exception as exc:  # noqa: BLE001 - the client gets the error; the model stays READY
            if run is not None:
                run.cancel()
            sentences.put(_DONE)  # a speaker still waiting for sentences ends (its slot is freed)
            with send_lock:
                send_error(sender, request, exc)
        finally:
            if token is not None:
                self.live.discard(token)

    def _speak(self, run, sentences, send, sender, errors, spoken, cancelled):
        try:
            while (sentence := sentences.get()) is not _DONE:
                if sender.is_cancelled() or cancelled.is_set():
                    continue
                for chunk in bls.Stream(self.graph.stream_tts_model, run.tts_inputs(sentence, batched=False), ["WAVEFORM", "SAMPLE_RATE"]):
                    send([self.outputs("WAVEFORM", chunk["WAVEFORM"]), self.outputs("SAMPLE_RATE", chunk["SAMPLE_RATE"])])
        except Exception as exc:  # noqa: BLE001 - reported by the turn thread
            errors.append(exc)
        finally:
            spoken.set()
