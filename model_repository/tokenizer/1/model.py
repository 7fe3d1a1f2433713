"""tokenizer: audio (any sample rate, mono or stereo) → dual-codebook LLM ids and their ``<audio_N>`` string.

AUDIO is (channels, samples) float32 in [-1, 1] (mono = one channel) with SAMPLE_RATE; batch 1 per request.
Encoders run through ONNX Runtime (vq02 chunk step exported at render time, vq06 ``speech_tokenizer_v1.onnx``).
Inputs are ragged, so concurrent requests of different lengths still reach one ``execute`` together.
"""

from concurrent.futures import ThreadPoolExecutor

from stepaudio.tokenizer import AudioTokenizer, ids_to_audio_string
from stepaudio_triton.adapter import (
    Outputs,
    device_for,
    optional_scalar,
    parameter,
    parse_config,
    rendered_parameter,
    repository_path,
    required_input,
    respond_each,
)


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        device_for(args, config)
        self.outputs = Outputs(config)
        threads = parameter(config, "ort_threads", 1, int)
        self.tokenizer = AudioTokenizer.from_checkpoint(
            parameter(config, "tokenizer_checkpoint"),
            backend="onnx",
            vq02_onnx=repository_path(args, parameter(config, "vq02_onnx", "1/vq02_encoder_chunk.onnx")),
            threads=threads,
        )
        self.max_seconds = rendered_parameter(config, "max_audio_seconds", float)
        self.pool = ThreadPoolExecutor(max(1, int(config.get("max_batch_size", 1))), thread_name_prefix="tokenizer")

    def execute(self, requests):
        return respond_each(requests, self._tokenize, self.pool)

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _tokenize(self, request):
        audio = required_input(request, "AUDIO")
        if audio.ndim != 3 or audio.shape[0] != 1:
            raise ValueError(f"AUDIO must be [1, channels, samples] (batch 1), got shape {list(audio.shape)}")
        rate = optional_scalar(request, "SAMPLE_RATE", int)
        if rate is None:
            raise ValueError("SAMPLE_RATE is required")
        result = self.tokenizer.tokenize(audio[0], rate, trim=False, max_seconds=self.max_seconds)
        if not result.ids:
            raise ValueError("audio is too short to give one 120 ms group of audio tokens")
        return [
            self.outputs("AUDIO_IDS", [result.ids]),
            self.outputs("VQ02", [result.vq02]),
            self.outputs("VQ06", [result.vq06]),
            self.outputs("AUDIO_STRING", [[ids_to_audio_string(result.ids).encode()]]),
        ]
