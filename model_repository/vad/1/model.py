"""vad: Silero VAD per session (sequence batcher). Each request: an audio chunk at the session's rate → the speech
probability of every 32 ms window (16 kHz) it completes, and the index of the first of them."""

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio.realtime.vad import SileroVad, run_batched
from stepaudio_triton.adapter import (
    Outputs,
    error_response,
    optional_scalar,
    parameter,
    parse_config,
    rendered_parameter,
    required_input,
)
from stepaudio_triton.sequences import SequenceControls, Sessions


def chunk_of(request, max_seconds: float, rate: int) -> np.ndarray:
    audio = required_input(request, "AUDIO")
    if audio.ndim != 2 or audio.shape[0] != 1:
        raise ValueError(f"AUDIO must be [1, samples] (batch 1), got shape {list(audio.shape)}")
    if audio.shape[1] > max_seconds * rate:
        raise ValueError(f"an AUDIO chunk may hold at most {max_seconds:g} s; send the audio as it arrives")
    return audio[0]


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        name = args["model_name"]
        self.outputs = Outputs(config)
        self.vad = SileroVad(threads=parameter(config, "ort_threads", 1, int))
        self.max_chunk_seconds = rendered_parameter(config, "max_chunk_seconds", float)
        self.live = Sessions(name, config)
        self.sessions = self.live.table

    def finalize(self):
        self.live.close()

    def _stream(self, request, controls: SequenceControls):
        rate = optional_scalar(request, "SAMPLE_RATE", int)
        if controls.start:
            if rate is None:
                raise ValueError("the START request of a session must carry SAMPLE_RATE")
            return self.sessions.open(controls.correlation_id, lambda: self.vad.stream(rate))
        stream = self.sessions.get(controls.correlation_id)
        if rate is not None and rate != stream.sample_rate:
            raise ValueError(f"SAMPLE_RATE {rate} differs from the session's {stream.sample_rate}")
        return stream

    def execute(self, requests):
        responses = [None] * len(requests)
        work = []  # (request index, stream, windows, controls)
        for i, request in enumerate(requests):
            controls = None
            try:
                controls = SequenceControls.from_request(request)
                stream = self._stream(request, controls)
                stream.push(chunk_of(request, self.max_chunk_seconds, stream.sample_rate))
                work.append((i, stream, stream.take_windows(), controls))
            except Exception as exc:  # noqa: BLE001 - this request's error; the batch goes on
                responses[i] = error_response(exc, request)
                if controls is not None and controls.end:
                    self.sessions.close(controls.correlation_id)
        # The sequence batcher sends one request per sequence per batch; run repeats (if ever) in later rounds.
        while work:
            seen, this_round, later = set(), [], []
            for item in work:
                (later if id(item[1]) in seen else this_round).append(item)
                seen.add(id(item[1]))
            frames = run_batched(self.vad, [(stream, windows) for _, stream, windows, _ in this_round])
            for (i, stream, _, controls), got in zip(this_round, frames):
                first = stream.windows_done - len(got)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    self.outputs("PROBABILITY", [[f.probability for f in got]]),
                    self.outputs("FIRST_WINDOW", [[first]]),
                ])
                if controls.end:
                    self.sessions.close(controls.correlation_id)
            work = later
        return responses
