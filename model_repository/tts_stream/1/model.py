"""tts_stream: streaming TTS (decoupled). Audio chunks leave while the LLM is still generating.

Per request, on its own thread: BLS ``tts_frontend`` → BLS ``tts_llm`` (decoupled, ids as produced) → streaming
token2wav (flow window re-run with lookahead + mel cross-fade, vocoder with context and carried source phase) whose
flow and vocoder calls go over BLS to the served ``flow_decoder`` / ``vocoder`` models (or their ``_music`` twins,
chosen by the text's leading tag), so streams batch with each other and with ``ensemble_tts`` there. The
first chunk comes after ``first_chunk_tokens`` ids, later ones grow; with ``deadline_cut`` a chunk is cut smaller
when the audio already sent would finish playing before the scheduled one could arrive. Each response carries
WAVEFORM (float32, 22.05 kHz) and SAMPLE_RATE; an empty final response ends the stream. A client cancel/disconnect stops the LLM
stream (its slot is freed at the engine's next step) and drops the decoder state; so does a CANCEL request naming
the stream's cancel token (how a BLS caller such as ``realtime_session`` stops it on barge-in:
``bls.Stream.request_cancel``), after which the stream ends CANCELLED.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from stepaudio.errors import Cancelled
from stepaudio.tts.streaming import (
    ChunkSchedule,
    Deadline,
    DeadlinePolicy,
    SpeechStream,
    token_seconds,
)
from stepaudio_contract import specs
from stepaudio_triton import bls
from stepaudio_triton.adapter import (
    Outputs,
    given_inputs,
    optional_scalar,
    parameter,
    parse_config,
    rendered_parameter,
    send,
    send_error,
    serve_decoupled,
)
from stepaudio_triton.generation import CancelFlag, LiveStreams, answer_cancel, cancel_token
from stepaudio_triton.served_decoder import ServedToken2Wav
from stepaudio_triton.threads import BoundedThreads


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        bls.configure(config)
        self.outputs = Outputs(config)
        self.decoders = {
            decoder: ServedToken2Wav(
                parameter(config, f"{decoder}_decoder_dir"),
                flow_model=parameter(config, f"{decoder}_flow_model"),
                vocoder_model=parameter(config, f"{decoder}_vocoder_model"),
            )
            for decoder in ("speech", "music")
        }
        self.schedule = ChunkSchedule(
            first_tokens=rendered_parameter(config, "first_chunk_tokens", int),
            growth=rendered_parameter(config, "chunk_growth", float),
            max_tokens=rendered_parameter(config, "max_chunk_tokens", int),
        )
        self.schedule.validate()
        # Cut a chunk early when the listener's audio would run out first (stepaudio/tts/streaming.py: Deadline).
        self.deadline = DeadlinePolicy(
            margin_s=rendered_parameter(config, "deadline_margin_ms", float) / 1000,
            min_tokens=rendered_parameter(config, "deadline_min_chunk_tokens", int),
        ) if rendered_parameter(config, "deadline_cut", bool) else None
        if self.deadline is not None:
            self.deadline.validate()
        self.frontend_model = parameter(config, "frontend_model", "tts_frontend")
        self.llm_model = parameter(config, "llm_model", "tts_llm")

        self.workers = BoundedThreads(rendered_parameter(config, "max_streams", int), "tts_stream")
        self.live = LiveStreams()  # running streams by cancel token

    def execute(self, requests):
        for request in requests:
            if answer_cancel(request, self.live):
                continue
            serve_decoupled(request, self.workers, self._serve)
        return None

    def finalize(self):
        self.workers.close()

    def _serve(self, request):
        sender = request.get_response_sender()
        llm_responses = token = None
        cancelled = CancelFlag()
        try:
            token = cancel_token(request)
            if token is not None:
                self.live.add(token, cancelled)
            inputs = given_inputs(request, specs.names(specs.FRONTEND_INPUTS))
            sampling = given_inputs(request, specs.names(specs.SAMPLING))
            seed = optional_scalar(request, "SEED", int)
            prepared = bls.call(self.frontend_model, inputs, specs.names(specs.MODELS["tts_frontend"].outputs))
            decoder = self.decoders[prepared["DECODER"].reshape(-1)[0].decode()]
            decoder_stream = decoder.stream(
                prepared["PROMPT_TOKENS"],
                prepared["PROMPT_MEL"],
                prepared["SPEAKER_EMBEDDING"],
                seed=seed if seed is not None else int(np.random.randint(0, 2**31)),
                chunk_tokens=self.schedule.first_tokens,
            )
            deadline = Deadline(self.deadline, token_seconds(decoder.config)) if self.deadline is not None else None
            speech = SpeechStream(decoder_stream, self.schedule, deadline, decoder.sample_rate)
            rate = [decoder.sample_rate]
            llm_responses = bls.Stream(self.llm_model, {"INPUT_IDS": prepared["INPUT_IDS"], **sampling}, ["OUTPUT_IDS"],
                                       cancellable=True)
            for response in llm_responses:
                if sender.is_cancelled():
                    llm_responses.cancel()
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                if cancelled.is_set():  # checked at every id: the stream stops within one decode step
                    raise Cancelled("stream cancelled by its owner")
                chunk = speech.feed(response["OUTPUT_IDS"])
                if chunk.size:
                    send(sender, request, [self.outputs("WAVEFORM", chunk), self.outputs("SAMPLE_RATE", rate)])
            last = speech.finish()
            send(sender, request, [self.outputs("WAVEFORM", last), self.outputs("SAMPLE_RATE", rate)], final=True)
        except Exception as exc:  # noqa: BLE001 - the client gets the error; the model stays READY
            if llm_responses is not None:
                llm_responses.cancel()
            send_error(sender, request, exc)
        finally:
            if token is not None:
                self.live.discard(token)

