"""voice_chat_stream: one chat turn, streamed. Text deltas leave as the chat model writes them; each reply
sentence goes to ``tts_stream`` as soon as it is complete and its audio chunks follow (sentence order kept).
A last response carries USER_TRANSCRIPT (for an audio turn) with the final flag. Cancelling stops the chat stream.
"""

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from stepaudio.chat.speech import SentenceSplitter
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

    def execute(self, requests):
        for request in requests:
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

        run = None
        try:
            run = ChatRun(self.graph, ChatTurnInputs.from_request(request, self.graph), self.pool)
            sentences: queue.Queue = queue.Queue()
            speak_errors: list = []
            spoken = threading.Event()
            if run.inputs.reply_audio:
                self.speakers.submit(lambda: self._speak(run, sentences, send, sender, speak_errors, spoken))
            else:  # text only: no speaker, no TTS request
                spoken.set()
            splitter = SentenceSplitter(self.graph.max_sentence_chars)
            for delta in run.reply_deltas():
                if sender.is_cancelled():
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
            send([string_tensor("USER_TRANSCRIPT", run.transcript())], final=True)
        except Exception as exc:  # noqa: BLE001 - the client gets the error; the model stays READY
            if run is not None:
                run.cancel()
            with send_lock:
                send_error(sender, request, exc)

    def _speak(self, run, sentences, send, sender, errors, spoken):
        try:
            while (sentence := sentences.get()) is not _DONE:
                if sender.is_cancelled():
                    continue
                for chunk in bls.Stream(self.graph.stream_tts_model, run.tts_inputs(sentence, batched=False), ["WAVEFORM", "SAMPLE_RATE"]):
                    send([self.outputs("WAVEFORM", chunk["WAVEFORM"]), self.outputs("SAMPLE_RATE", chunk["SAMPLE_RATE"])])
        except Exception as exc:  # noqa: BLE001 - reported by the turn thread
            errors.append(exc)
        finally:
            spoken.set()
