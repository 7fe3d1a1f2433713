"""chat_reply: the chat step of ensemble_chat. Text turns + the tokenizer step's AUDIO_IDS → chat_llm (reply and,
for an audio turn, ASR mode; both over BLS, collected) → REPLY_TEXT + USER_TRANSCRIPT in one response.

It exists because an ensemble cannot feed a decoupled chat_llm's text deltas to a TTS step that needs the whole
reply (see model_repository/README.md).
"""

from concurrent.futures import ThreadPoolExecutor

from stepaudio_contract.client import string
from stepaudio_triton.adapter import parse_config, respond_each, tensor
from stepaudio_triton.voice_chat import ChatGraph, collected_reply


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.graph = ChatGraph.from_config(config)
        threads = max(1, int(config.get("max_batch_size", 1)))  # the requests of one batch run side by side
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="chat_reply")
        self.asr_pool = ThreadPoolExecutor(threads, thread_name_prefix="chat_reply-asr")  # turns wait on transcriptions

    def execute(self, requests):
        return respond_each(requests, self._reply, self.pool)

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.asr_pool.shutdown(wait=True, cancel_futures=True)

    def _reply(self, request):
        reply, transcript = collected_reply(self.graph, request, self.asr_pool)
        return [tensor("REPLY_TEXT", string(reply, batched=True)), tensor("USER_TRANSCRIPT", string(transcript, batched=True))]
