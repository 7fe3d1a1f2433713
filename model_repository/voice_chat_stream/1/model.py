"""voice_chat_stream: one chat turn, streamed. Text deltas leave as the chat model writes them; each reply
sentence goes to ``tts_stream`` as soon as it is complete and its audio chunks follow (sentence order kept).
A last response carries USER_TRANSCRIPT (for an audio turn) with the final flag. Cancelling stops the chat stream:
the client's own cancel, or (where compat.py needs ``cancel_input``) a CANCEL request naming the turn's
``cancel_token``, which the gateway sends instead of cancelling a running gRPC call (``in_band_grpc_cancel``).
"""

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

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
from stepaudio_triton.voice_chat import ChatGraph, turn_request

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

        turn = token = None
        cancelled = CancelFlag()
        sentences: queue.Queue = queue.Queue()
        speak_errors: list = []
        spoken = threading.Event()
        speaking = False
        try:
            token = cancel_token(request)
            turn = self.graph.turn(turn_request(request, self.graph), self.pool)  # no request made yet
            cancelled.then = turn.stop  # a CANCEL stops the reply and the sentence being spoken at once
            if token is not None:
                self.live.add(token, cancelled)
            turn.start()
            if turn.request.voice is not None:
                self.speakers.submit(lambda: self._speak(turn, sentences, send, speak_errors, spoken))
                speaking = True
            for delta, completed in turn.reply(self.graph.max_sentence_chars):
                if sender.is_cancelled():  # checked at every delta: stops within one step
                    turn.stop()
                    break
                if delta:
                    send([string_tensor("TEXT_DELTA", delta)])
                for sentence in completed:
                    sentences.put(sentence)
            sentences.put(_DONE)
            if speaking:
                spoken.wait()
            if cancelled.is_set():  # after the speaker stopped: nothing is sent after this error
                raise Cancelled("turn cancelled by its owner")
            if speak_errors and not sender.is_cancelled():
                raise speak_errors[0]
            send([string_tensor("USER_TRANSCRIPT", turn.transcript())], final=True)
        except Exception as exc:  # noqa: BLE001 - the client gets the error; the model stays READY
            if turn is not None:
                turn.stop()
            sentences.put(_DONE)  # a speaker still waiting for sentences ends (its slot is freed)
            if speaking:
                spoken.wait()
            failure = exc
            if cancelled.is_set():
                failure = Cancelled("turn cancelled by its owner")
            elif speak_errors:  # the speaker's failure stopped the turn: it is the cause
                failure = speak_errors[0]
            with send_lock:
                send_error(sender, request, failure)
        finally:
            if turn is not None:
                if speaking:
                    spoken.wait()  # a stream has one reader: the speaker ends its own first
                turn.drain()
            if token is not None:
                self.live.discard(token)

    def _speak(self, turn, sentences, send, errors, spoken):
        try:
            while (sentence := sentences.get()) is not _DONE:
                if turn.stopped.is_set():
                    continue  # the turn thread still puts _DONE
                for wave, rate in turn.speak(sentence):
                    send([self.outputs("WAVEFORM", wave), self.outputs("SAMPLE_RATE", [rate])])
        except Exception as exc:  # noqa: BLE001 - reported by the turn thread
            errors.append(exc)
            turn.stop()  # the reply stops too: nothing more of this turn is spoken
            while sentences.get() is not _DONE:
                pass
        finally:
            spoken.set()
