"""tts: text + voice → decoder inputs (the first step of ``ensemble_tts``).

BLS: ``tts_frontend`` (prompt + voice conditioning) → ``tts_llm`` (streamed ids, collected) → validated decoder ids
and seeded noise. Each instance handles one request at a time (its BLS calls stay on the stub's main thread);
concurrency comes from several instances, whose LLM streams share the engine's decode steps. The ``decoder``
parameter says which decoder the ensemble behind this model feeds; a text whose tags route to the other decoder is
refused with a pointer to the right endpoint.
"""

import numpy as np

# numpy-only modules: the eight tts/tts_music stubs start without importing torch.
from stepaudio.decoder.config import load_config
from stepaudio.decoder.noise import DecoderNoise
from stepaudio.tts.decoder_ids import decoder_tokens
from stepaudio_triton import bls
from stepaudio_triton.adapter import optional_input, parameter, parse_config, respond_each, tensor

FRONTEND_INPUTS = ("TEXT", "SPEAKER", "PROMPT_AUDIO", "PROMPT_SAMPLE_RATE", "PROMPT_TEXT")
FRONTEND_OUTPUTS = ["INPUT_IDS", "PROMPT_TOKENS", "PROMPT_MEL", "SPEAKER_EMBEDDING", "DECODER"]


def _unbatched(request, names):
    """Inputs without the batch dimension of this model's config (requests carry batch 1)."""
    values = {}
    for name in names:
        value = optional_input(request, name)
        if value is not None:
            if value.shape[0] != 1:
                raise ValueError(f"send one utterance per request (batch 1); {name} has batch {value.shape[0]}")
            values[name] = value[0]
    return values


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        bls.configure(config)
        self.decoder = parameter(config, "decoder", "speech")
        self.frontend_model = parameter(config, "frontend_model", "tts_frontend")
        self.llm_model = parameter(config, "llm_model", "tts_llm")
        self.endpoint_for = {"speech": parameter(config, "speech_endpoint", "ensemble_tts"),
                             "music": parameter(config, "music_endpoint", "ensemble_tts_music")}
        self.decoder_config = load_config(parameter(config, "decoder_dir"))
        # Every other input of this model's config is a sampling input for the LLM (TEMPERATURE, SEED, ...).
        self.sampling_inputs = [i["name"] for i in config["input"] if i["name"] not in FRONTEND_INPUTS]

    def execute(self, requests):
        return respond_each(requests, self._one)

    def _one(self, request):
        frontend_inputs = _unbatched(request, FRONTEND_INPUTS)
        sampling = _unbatched(request, self.sampling_inputs)
        prepared = bls.call(self.frontend_model, frontend_inputs, FRONTEND_OUTPUTS)
        decoder = prepared["DECODER"].reshape(-1)[0].decode()
        if decoder != self.decoder:
            raise ValueError(
                f"this text's leading tag needs the {decoder} decoder; send it to {self.endpoint_for[decoder]} "
                "(or to tts_stream, which routes by itself)"
            )
        generated = []
        for response in bls.Stream(self.llm_model, {"INPUT_IDS": prepared["INPUT_IDS"], **sampling}, ["OUTPUT_IDS"], cancellable=True):
            generated.extend(int(i) for i in response["OUTPUT_IDS"].reshape(-1))
        tokens = decoder_tokens(generated)
        prompt_tokens, prompt_mel = prepared["PROMPT_TOKENS"], prepared["PROMPT_MEL"]
        seed = int(sampling["SEED"].reshape(-1)[0]) if "SEED" in sampling else int(np.random.randint(0, 2**31))
        noise = DecoderNoise.from_seed(seed, prompt_mel.shape[0], tokens.size, self.decoder_config)
        batch = lambda a: np.ascontiguousarray(np.asarray(a)[None])  # noqa: E731 - batch dimension of 1
        return [
            tensor("AUDIO_IDS", batch(np.asarray(generated, dtype=np.int32))),
            tensor("TOKENS", batch(tokens.astype(np.int64))),
            tensor("TOKENS_LEN", batch(np.array([tokens.size], np.int64))),
            tensor("PROMPT_TOKENS", batch(prompt_tokens.astype(np.int64))),
            tensor("PROMPT_TOKENS_LEN", batch(np.array([prompt_tokens.size], np.int64))),
            tensor("PROMPT_MEL", batch(prompt_mel.astype(np.float32))),
            tensor("PROMPT_MEL_LEN", batch(np.array([prompt_mel.shape[0]], np.int64))),
            tensor("SPEAKER_EMBEDDING", batch(prepared["SPEAKER_EMBEDDING"].astype(np.float32))),
            tensor("FLOW_NOISE", batch(noise.flow)),
            tensor("SOURCE_PHASE", batch(noise.source_phase)),
            tensor("SOURCE_NOISE", batch(noise.source_noise)),
            tensor("SAMPLE_RATE", batch(np.array([self.decoder_config.hift.sampling_rate], np.int32))),
        ]
