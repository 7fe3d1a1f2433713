"""chat_llm: Step-Audio-Chat with the chat template; decoupled, streams text deltas.

MESSAGES is the conversation as JSON text turns ([{"role", "content"}], roles system/user/assistant); AUDIO_IDS,
when given, is audio of the last user turn (appended to its text, or a new user turn when the last turn is not the
user's). MODE "asr" transcribes AUDIO_IDS instead (the reference's ASR system prompt, greedy by default) — the
transcript replaces the audio turn in the client's text history. Each response carries TEXT_DELTA; an empty final
response ends the stream. The engine behind it is the continuous-batching Step1 engine (a vLLM tensor-parallel
engine for the 130B model implements the same interface).
"""

import dataclasses

from stepaudio.chat.session import TextDeltas, chat_prompt_ids
from stepaudio.chat.template import ChatTurn, asr_max_new_tokens, asr_turns, turns_from_json
from stepaudio.llm.engine import GenerationRequest
from stepaudio.llm.engine_config import LLMEngineOptions
from stepaudio.llm.engine_factory import build_engine
from stepaudio.llm.sampling import SamplingParams
from stepaudio.llm.tokenizer import Step1Tokenizer
from stepaudio_triton.adapter import (
    device_for,
    optional_input,
    optional_string,
    parameter,
    parse_config,
    rendered_parameter,
    string_tensor,
)
from stepaudio_triton.generation import LiveStreams, sampling_from_request, serve_generation, token_ranges
from stepaudio_triton.threads import BoundedThreads


def conversation(request) -> tuple[list[ChatTurn], bool]:
    """The turns to prompt with, and whether this is an ASR request."""
    mode = optional_string(request, "MODE") or "chat"
    if mode not in ("chat", "asr"):
        raise ValueError(f"MODE must be 'chat' or 'asr', got {mode!r}")
    audio = optional_input(request, "AUDIO_IDS")
    audio_ids = () if audio is None else tuple(int(i) for i in audio.reshape(-1))
    if mode == "asr":
        if not audio_ids:
            raise ValueError("MODE 'asr' needs AUDIO_IDS")
        return asr_turns(audio_ids), True
    turns = turns_from_json(optional_string(request, "MESSAGES") or "")
    if audio_ids:
        if turns and turns[-1].role == "user":
            turns[-1] = ChatTurn("user", turns[-1].text, audio_ids)
        else:
            turns.append(ChatTurn("user", "", audio_ids))
    if not turns:
        raise ValueError("send MESSAGES (text turns) and/or AUDIO_IDS")
    return turns, False


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        device = device_for(args, config)
        checkpoint = parameter(config, "checkpoint")
        self.tokenizer = Step1Tokenizer.from_pretrained(checkpoint)
        # engine: native | vllm (tensor parallel for the 130B model), from this model's parameters.
        self.engine = build_engine(
            checkpoint,
            LLMEngineOptions.from_parameters(config.get("parameters", {})),
            dtype=parameter(config, "dtype", "bfloat16" if device != "cpu" else "float32"),
            device=device,
            max_batch_size=rendered_parameter(config, "max_batch_size", int),
        )
        self.max_context_tokens = min(rendered_parameter(config, "max_context_tokens", int), self.engine.max_seq_len - 1)
        # Reference StepAudio.__call__: temperature 0.7, top_p 0.9, 2048 new tokens, HF's top_k 50, no repetition rule.
        self.defaults = SamplingParams(
            temperature=parameter(config, "temperature", 0.7, float),
            top_k=parameter(config, "top_k", 50, int),
            top_p=parameter(config, "top_p", 0.9, float),
            max_new_tokens=parameter(config, "max_new_tokens", 2048, int),
            repetition_threshold=0.0,
            allowed_token_ranges=token_ranges(parameter(config, "allowed_token_ranges", "")),
        )
        self.defaults.validate()
        self.asr_defaults = dataclasses.replace(self.defaults, temperature=0.0)
        self.max_new_tokens_limit = rendered_parameter(config, "max_new_tokens_limit", int)
        self.live = LiveStreams()
        self.workers = BoundedThreads(rendered_parameter(config, "max_streams", int), "chat_llm")

    def execute(self, requests):
        for request in requests:
            serve_generation(request, self.live, self.workers, self._submit, self._text_deltas)
        return None

    def _submit(self, request):
        turns, asr = conversation(request)
        ids = chat_prompt_ids(self.tokenizer, turns, self.max_context_tokens)
        defaults = self.defaults
        if asr:
            defaults = dataclasses.replace(self.asr_defaults, max_new_tokens=asr_max_new_tokens(len(turns[-1].audio_ids)))
        sampling = sampling_from_request(request, defaults, max(self.max_new_tokens_limit, defaults.max_new_tokens))
        return self.engine.submit(GenerationRequest(ids, sampling, request.request_id()))

    def _text_deltas(self, stream):
        deltas = TextDeltas(self.tokenizer)

        def respond(token_ids):
            text = "".join(deltas.feed(t) for t in token_ids)
            return [string_tensor("TEXT_DELTA", text)] if text else None

        return respond

    def finalize(self):
        self.engine.shutdown()  # ends every stream, so the stream threads finish
        self.workers.close()
