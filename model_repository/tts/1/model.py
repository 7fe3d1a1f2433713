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
from stepaudio_contract import specs
from stepaudio_triton import bls
from stepaudio_triton.adapter import Outputs, given_inputs, parameter, parse_config, respond_each

FRONTEND_OUTPUTS = specs.names(specs.MODELS["tts_frontend"].outputs)


def _unbatched(request, names):
    """Inputs without the batch dimension of this model's config (requests carry batch 1)."""
    values = given_inputs(request, names)
    for name, value in values.items():
        if value.shape[0] != 1:
            raise ValueError(f"send one utterance per request (batch 1); {name} has batch {value.shape[0]}")
    return {name: value[0] for name, value in values.items()}


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        bls.configure(config)
        self.outputs = Outputs(config)
        self.decoder = parameter(config, "decoder", "speech")
        self.frontend_model = parameter(config, "frontend_model", "tts_frontend")
        self.llm_model = parameter(config, "llm_model", "tts_llm")
        self.endpoint_for = {"speech": parameter(config, "speech_endpoint", "ensemble_tts"),
                             "music": parameter(config, "music_endpoint", "ensemble_tts_music")}
        self.decoder_config = load_config(parameter(config, "decoder_dir"))

    def execute(self, requests):
        return respond_each(requests, self._one)

    def _one(self, request):
        frontend_inputs = _unbatched(request, specs.names(specs.FRONTEND_INPUTS))
        sampling = _unbatched(request, specs.names(specs.SAMPLING))
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
        batch = lambda values: np.asarray(values)[None]  # noqa: E731 - batch dimension of 1
        return [
            self.outputs("AUDIO_IDS", batch(generated)),
            self.outputs("TOKENS", batch(tokens)),
            self.outputs("TOKENS_LEN", batch([tokens.size])),
            self.outputs("PROMPT_TOKENS", batch(prompt_tokens)),
            self.outputs("PROMPT_TOKENS_LEN", batch([prompt_tokens.size])),
            self.outputs("PROMPT_MEL", batch(prompt_mel)),
            self.outputs("PROMPT_MEL_LEN", batch([prompt_mel.shape[0]])),
            self.outputs("SPEAKER_EMBEDDING", batch(prepared["SPEAKER_EMBEDDING"])),
            self.outputs("FLOW_NOISE", batch(noise.flow)),
            self.outputs("SOURCE_PHASE", batch(noise.source_phase)),
            self.outputs("SOURCE_NOISE", batch(noise.source_noise)),
            self.outputs("SAMPLE_RATE", batch([self.decoder_config.hift.sampling_rate])),
        ]
