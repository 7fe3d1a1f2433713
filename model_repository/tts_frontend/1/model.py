"""tts_frontend: text + voice → the TTS LLM prompt and the decoder's voice conditioning.

Holds the voice cache (prompt tokens, prompt mel, CAM++ embedding keyed by audio content) once per instance, so
``tts`` and ``tts_stream`` share it through BLS. Preset voices come from the configured folder; requests carry
arrays, never paths.
"""

import gc

from stepaudio.tts.frontend import TTSFrontend, TTSRequest
from stepaudio_triton.adapter import (
    Outputs,
    device_for,
    optional_input,
    optional_scalar,
    optional_string,
    parameter,
    parse_config,
    rendered_parameter,
    repository_path,
    required_input,
    respond_each,
    string_tensor,
)


def tts_request(request) -> TTSRequest:
    text = optional_string(request, "TEXT")
    if text is None:
        required_input(request, "TEXT")
    return TTSRequest(
        text=text,
        speaker=optional_string(request, "SPEAKER"),
        prompt_audio=optional_input(request, "PROMPT_AUDIO"),
        prompt_sample_rate=optional_scalar(request, "PROMPT_SAMPLE_RATE", int),
        prompt_text=optional_string(request, "PROMPT_TEXT"),
    )


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        device_for(args, config)
        self.outputs = Outputs(config)
        self.frontend = TTSFrontend.from_checkpoints(
            parameter(config, "tts_checkpoint"),
            parameter(config, "tokenizer_checkpoint"),
            parameter(config, "voices_dir") or None,
            voice_cache_entries=rendered_parameter(config, "voice_cache_entries", int),
            vq02_onnx=repository_path(args, parameter(config, "vq02_onnx", "../tokenizer/1/vq02_encoder_chunk.onnx")),
            max_text_chars=rendered_parameter(config, "max_text_chars", int),
            max_prompt_seconds=rendered_parameter(config, "max_prompt_seconds", float),
        )
        if self.frontend.presets is not None:
            self.frontend.presets.warm()  # preset voices are featurised before the model reports READY

    def execute(self, requests):
        return respond_each(requests, self._prepare)

    def finalize(self):
        # ONNX Runtime sessions freed while the interpreter is still whole, not by exit-time teardown.
        self.frontend = None
        gc.collect()

    def _prepare(self, request):
        prepared = self.frontend.prepare(tts_request(request))
        voice = prepared.voice
        return [
            self.outputs("INPUT_IDS", prepared.prompt_ids),
            self.outputs("PROMPT_TOKENS", voice.decoder_tokens),
            self.outputs("PROMPT_MEL", voice.prompt_mel),
            self.outputs("SPEAKER_EMBEDDING", voice.speaker_embedding),
            string_tensor("DECODER", "music" if prepared.music else "speech"),
        ]
