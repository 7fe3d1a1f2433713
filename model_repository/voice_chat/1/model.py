"""voice_chat: one chat turn, speech and/or text in → reply text + reply audio (+ the user's transcript) out.

The graph needs a loop over reply sentences, so it is BLS: tokenizer → chat_llm → ensemble_tts per sentence
(``chat_turn.ChatTurn``).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from stepaudio_triton import bls
from stepaudio_triton.adapter import Outputs, parse_config, respond_each, string_tensor
from stepaudio_triton.voice_chat import ChatGraph, turn_request


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        bls.configure(config)
        self.outputs = Outputs(config)
        self.graph = ChatGraph.speaking_from_config(config)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="voice_chat")
        self.asr_pool = ThreadPoolExecutor(8, thread_name_prefix="voice_chat-asr")  # separate: turns wait on transcriptions

    def execute(self, requests):
        return respond_each(requests, self._turn, self.pool)

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.asr_pool.shutdown(wait=True, cancel_futures=True)

    def _turn(self, request):
        turn = self.graph.turn(turn_request(request, self.graph), self.asr_pool).start()
        reply, sentences = "", []
        for delta, completed in turn.reply(self.graph.max_sentence_chars):
            reply += delta
            sentences += completed
        waves, rate = [], 22050
        for sentence in sentences if turn.request.voice is not None else ():
            wave, rate = turn.speak_whole(sentence)
            waves.append(wave)
        wave = np.concatenate(waves) if waves else []
        return [
            string_tensor("REPLY_TEXT", reply),
            string_tensor("USER_TRANSCRIPT", turn.transcript()),
            self.outputs("WAVEFORM", wave),
            self.outputs("SAMPLE_RATE", [rate]),
        ]
