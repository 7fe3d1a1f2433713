"""stream_tokenizer: a session's audio chunks → the dual-codebook LLM ids that each chunk makes final (END flushes)."""

import triton_python_backend_utils as pb_utils

from stepaudio.tokenizer import AudioTokenizer
from stepaudio_triton.adapter import (
    Outputs,
    device_for,
    error_response,
    optional_scalar,
    parameter,
    parse_config,
    rendered_parameter,
    repository_path,
    required_input,
)
from stepaudio_triton.sequences import SequenceControls, Sessions


class Session:
    def __init__(self, tokenizer: AudioTokenizer, rate: int, max_seconds: float):
        self.stream = tokenizer.stream(rate)
        self.rate, self.max_samples, self.samples = self.stream.sample_rate, int(max_seconds * self.stream.sample_rate), 0


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        device_for(args, config)
        name = args["model_name"]
        self.outputs = Outputs(config)
        self.tokenizer = AudioTokenizer.from_checkpoint(
            parameter(config, "tokenizer_checkpoint"), backend="onnx",
            vq02_onnx=repository_path(args, parameter(config, "vq02_onnx")),
            vq06_segment_seconds=rendered_parameter(config, "vq06_segment_seconds", float),
            threads=parameter(config, "ort_threads", 1, int))
        self.max_chunk_seconds = rendered_parameter(config, "max_chunk_seconds", float)
        self.max_stream_seconds = rendered_parameter(config, "max_stream_seconds", float)
        self.live = Sessions(name, config)
        self.sessions = self.live.table

    def finalize(self):
        self.live.close()

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        controls = None
        try:
            controls = SequenceControls.from_request(request)
            ids = self._ids(request, controls)
            return pb_utils.InferenceResponse(output_tensors=[self.outputs("AUDIO_IDS", [ids])])
        except Exception as exc:  # noqa: BLE001 - this request's error; the model stays up
            return error_response(exc, request)
        finally:
            if controls is not None and controls.end:
                self.sessions.close(controls.correlation_id)

    def _ids(self, request, controls: SequenceControls) -> list[int]:
        rate = optional_scalar(request, "SAMPLE_RATE", int)
        if controls.start:
            if rate is None:
                raise ValueError("the START request of a session must carry SAMPLE_RATE")
            session = self.sessions.open(controls.correlation_id, lambda: Session(self.tokenizer, rate, self.max_stream_seconds))
        else:
            session = self.sessions.get(controls.correlation_id)
            if rate is not None and rate != session.rate:
                raise ValueError(f"SAMPLE_RATE {rate} differs from the session's {session.rate}")
        audio = required_input(request, "AUDIO")
        if audio.ndim != 2 or audio.shape[0] != 1:
            raise ValueError(f"AUDIO must be [1, samples] (batch 1), got shape {list(audio.shape)}")
        if audio.shape[1] > self.max_chunk_seconds * session.rate:
            raise ValueError(f"an AUDIO chunk may hold at most {self.max_chunk_seconds:g} s; send the audio as it arrives")
        session.samples += audio.shape[1]
        if session.samples > session.max_samples:
            raise ValueError(f"the session's audio passed its limit of {self.max_stream_seconds:g} s")
        ids = session.stream.feed(audio[0])
        return ids + session.stream.finish() if controls.end else ids
