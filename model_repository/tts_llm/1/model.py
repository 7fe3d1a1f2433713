"""tts_llm: Step-Audio-TTS-3B behind the continuous-batching Step1 engine; decoupled, streams generated ids.

Inputs: INPUT_IDS (the full prompt, built by ``tts_frontend``) and the optional sampling tensors of
``stepaudio_triton.generation.SAMPLING_INPUTS``. Output: OUTPUT_IDS, one response per generated id (LLM ids; the
stop id is not sent), then an empty final response. Every concurrent stream shares one forward per decode step.
"""

import triton_python_backend_utils as pb_utils

from stepaudio.llm.engine import GenerationRequest
from stepaudio.llm.engine_config import LLMEngineOptions, build_engine
from stepaudio.llm.sampling import SamplingParams
from stepaudio_triton.adapter import device_for, error_response, parameter, parse_config
from stepaudio_triton.generation import (
    LiveStreams,
    answer_cancel,
    ids_tensor,
    prompt_ids,
    sampling_from_request,
    stream_tokens,
    token_ranges,
)


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        device = device_for(args, config)
        on_gpu = device != "cpu"
        # engine: native | vllm, and vLLM's parallel/memory settings, from this model's parameters.
        self.engine = build_engine(
            parameter(config, "checkpoint"),
            LLMEngineOptions.from_parameters(config.get("parameters", {})),
            dtype=parameter(config, "dtype", "bfloat16" if on_gpu else "float32"),
            device=device,
            max_batch_size=parameter(config, "max_batch_size", 8, int),
        )
        self.defaults = SamplingParams(
            temperature=parameter(config, "temperature", 0.7, float),
            top_k=parameter(config, "top_k", 50, int),
            top_p=parameter(config, "top_p", 1.0, float),
            max_new_tokens=parameter(config, "max_new_tokens", 4096, int),
            repetition_window=parameter(config, "repetition_window", 10, int),
            repetition_threshold=parameter(config, "repetition_threshold", 0.1, float),
            allowed_token_ranges=token_ranges(parameter(config, "allowed_token_ranges", "")),
        )
        self.defaults.validate()
        self.live = LiveStreams()

    def execute(self, requests):
        for request in requests:
            if answer_cancel(request, self.live):
                continue
            sender = request.get_response_sender()
            try:
                generation = GenerationRequest(
                    prompt_ids(request), sampling_from_request(request, self.defaults), request.request_id()
                )
                stream = self.engine.submit(generation)
            except Exception as exc:  # noqa: BLE001 - bad input answers this request only
                sender.send(error_response(exc), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            stream_tokens(stream, sender, lambda ids: [ids_tensor("OUTPUT_IDS", ids)], live=self.live)
        return None

    def finalize(self):
        self.engine.shutdown()
