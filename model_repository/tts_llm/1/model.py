"""tts_llm: Step-Audio-TTS-3B behind the continuous-batching Step1 engine; decoupled, streams generated ids.

Inputs: INPUT_IDS (the full prompt, built by ``tts_frontend``) and the optional sampling tensors of
``stepaudio_contract.specs.SAMPLING``. Output: OUTPUT_IDS, the generated ids as they come (one per response, or all
that were made while the previous response was on its way: ``TokenStream.ready``; LLM ids; the stop id is not
sent), then an empty final response. Every concurrent stream shares one forward per decode step.
"""

from stepaudio.llm.engine import GenerationRequest
from stepaudio.llm.engine_config import LLMEngineOptions
from stepaudio.llm.engine_factory import build_engine
from stepaudio.llm.sampling import SamplingParams
from stepaudio_triton.adapter import Outputs, device_for, parameter, parse_config, rendered_parameter
from stepaudio_triton.generation import (
    LiveStreams,
    prompt_ids,
    sampling_from_request,
    serve_generation,
    token_ranges,
)
from stepaudio_triton.threads import BoundedThreads


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        device = device_for(args, config)
        self.outputs = Outputs(config)
        on_gpu = device != "cpu"
        # engine: native | vllm, and vLLM's parallel/memory settings, from this model's parameters.
        self.engine = build_engine(
            parameter(config, "checkpoint"),
            LLMEngineOptions.from_parameters(config.get("parameters", {})),
            dtype=parameter(config, "dtype", "bfloat16" if on_gpu else "float32"),
            device=device,
            max_batch_size=rendered_parameter(config, "max_batch_size", int),
        )
        self.defaults = SamplingParams(
            temperature=parameter(config, "temperature", 0.7, float),
            top_k=parameter(config, "top_k", 50, int),
            top_p=parameter(config, "top_p", 1.0, float),
            max_new_tokens=rendered_parameter(config, "max_new_tokens", int),
            repetition_window=parameter(config, "repetition_window", 10, int),
            repetition_threshold=parameter(config, "repetition_threshold", 0.1, float),
            allowed_token_ranges=token_ranges(parameter(config, "allowed_token_ranges", "")),
        )
        self.defaults.validate()
        self.max_new_tokens_limit = rendered_parameter(config, "max_new_tokens_limit", int)
        self.live = LiveStreams()
        self.workers = BoundedThreads(rendered_parameter(config, "max_streams", int), "tts_llm")

    def execute(self, requests):
        for request in requests:
            serve_generation(request, self.live, self.workers, self._submit, lambda stream: self._respond)
        return None

    def _submit(self, request):
        sampling = sampling_from_request(request, self.defaults, self.max_new_tokens_limit)
        return self.engine.submit(GenerationRequest(prompt_ids(request), sampling, request.request_id()))

    def _respond(self, ids):
        return [self.outputs("OUTPUT_IDS", ids)]

    def finalize(self):
        self.engine.shutdown()  # ends every stream, so the stream threads finish
        self.workers.close()
