"""Every served model's request and response tensors, declared once.

``export/render_repository.py`` writes each config's ``input [...]`` / ``output [...]`` blocks from ``MODELS`` (the
``${inputs}`` / ``${outputs}`` placeholders of ``model_repository/<template>/config.pbtxt``), for the GPU and the CPU
variant alike; the adapters take their input groups (sampling, voice, ...) from here and cast their outputs to the
dtypes their config declares. Adding an input is one line here (plus the code that reads it).

Pure data: importable without Triton, by the renderer and the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from stepaudio_contract.compat import TritonFeatures
from stepaudio_contract.errors import ERROR_OUTPUT

_PYTHON_TYPES = {"TYPE_FP": float, "TYPE_INT": int, "TYPE_UINT": int, "TYPE_BOOL": bool, "TYPE_STRING": str}


def python_type(data_type: str) -> type:
    """What one element of a Triton data type reads as: float, int, bool or str."""
    return next(kind for prefix, kind in _PYTHON_TYPES.items() if data_type.startswith(prefix))


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's name, e.g. TYPE_FP32
    dims: tuple[int, ...]
    optional: bool = False
    ragged: str = ""  # allow_ragged_batch: "always", "cpu" (the CPU config's own ragged batching) or "" (never)
    scalar: bool = False  # ONNX models: dims [1] reshaped to a scalar per batch row
    note: str = ""  # a comment for the rendered config
    only_for: str = ""  # declared only while this compat workaround is needed (stepaudio_contract/compat.py)

    def but(self, **changes) -> Tensor:
        return dataclasses.replace(self, **changes)

    @property
    def python_type(self) -> type:
        return python_type(self.data_type)

    @property
    def numpy_dtype(self) -> str:
        """numpy's name for the data type (clients build their arrays with it; no numpy import here)."""
        if self.data_type == "TYPE_STRING":
            return "object"
        return self.data_type.removeprefix("TYPE_").lower().replace("fp", "float")

    def pbtxt(self, variant: str) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        text = f'{{ name: "{self.name}" data_type: {self.data_type} dims: [ {dims} ]'
        if self.scalar:
            text += " reshape: { shape: [ ] }"
        if self.optional:
            text += " optional: true"
        if self.ragged == "always" or self.ragged == variant:
            text += " allow_ragged_batch: true"
        return text + " }"


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def names(tensors) -> list[str]:
    return [t.name for t in tensors]


def served(tensors: tuple[Tensor, ...], features: TritonFeatures) -> tuple[Tensor, ...]:
    """The tensors a server with ``features`` is given: those of a workaround it does not need are left out."""
    return tuple(t for t in tensors if not t.only_for or features.needs(t.only_for))


def pbtxt_block(kind: str, tensors: tuple[Tensor, ...], variant: str) -> str:
    """``input [ ... ]`` / ``output [ ... ]`` in the layout of a hand-written config, one tensor a line."""
    lines = []
    for i, tensor in enumerate(tensors):
        line = "  " + tensor.pbtxt(variant) + ("," if i < len(tensors) - 1 else "")
        lines.append(line + (f"  # {tensor.note}" if tensor.note else ""))
    return f"{kind} [\n" + "\n".join(lines) + "\n]"


def _string(name: str) -> Tensor:
    return Tensor(name, "TYPE_STRING", (1,))


# Optional sampling inputs of every path that runs an LLM (field names of stepaudio.llm.sampling.SamplingParams,
# lower-cased).
TEMPERATURE = Tensor("TEMPERATURE", "TYPE_FP32", (1,), optional=True)
TOP_K = Tensor("TOP_K", "TYPE_INT32", (1,), optional=True)
TOP_P = Tensor("TOP_P", "TYPE_FP32", (1,), optional=True)
SEED = Tensor("SEED", "TYPE_INT64", (1,), optional=True)
MAX_NEW_TOKENS = Tensor("MAX_NEW_TOKENS", "TYPE_INT32", (1,), optional=True)
SAMPLING = (TEMPERATURE, TOP_K, TOP_P, SEED, MAX_NEW_TOKENS)
TTS_MAX_NEW_TOKENS = MAX_NEW_TOKENS.but(name="TTS_MAX_NEW_TOKENS")  # speech ids per reply sentence (chat models)

# A stream's owner cancels it with CANCEL = its cancel token (stepaudio_triton/generation.py); a BLS caller gets a
# stream's error in ERROR. Both exist for a Triton without BLS cancellation / error responses (compat.py).
CANCEL = _string("CANCEL").but(optional=True, only_for="cancel_input")
ERROR = _string(ERROR_OUTPUT).but(note="a stream's error for BLS callers (stepaudio_contract/errors.py)",
                                  only_for="error_output")

# The voice of a TTS request: a preset SPEAKER or a cloned voice (all three PROMPT_* tensors).
TEXT = _string("TEXT")
SPEAKER = _string("SPEAKER").but(optional=True)
PROMPT_VOICE = (
    Tensor("PROMPT_AUDIO", "TYPE_FP32", (-1,), optional=True),
    Tensor("PROMPT_SAMPLE_RATE", "TYPE_INT32", (1,), optional=True),
    _string("PROMPT_TEXT").but(optional=True),
)
VOICE = (SPEAKER, *PROMPT_VOICE)
FRONTEND_INPUTS = (TEXT, *VOICE)  # tts_frontend's, forwarded as they are by tts and tts_stream

# The decoder's voice conditioning, as tts_frontend and tts send it.
PROMPT_TOKENS = Tensor("PROMPT_TOKENS", "TYPE_INT64", (-1,))
PROMPT_MEL = Tensor("PROMPT_MEL", "TYPE_FP32", (-1, 80))
SPEAKER_EMBEDDING = Tensor("SPEAKER_EMBEDDING", "TYPE_FP32", (192,))

AUDIO_IDS = Tensor("AUDIO_IDS", "TYPE_INT32", (-1,))  # dual-codebook LLM ids of audio
WAVEFORM = Tensor("WAVEFORM", "TYPE_FP32", (-1,))
SAMPLE_RATE = Tensor("SAMPLE_RATE", "TYPE_INT32", (1,))
AUDIO_CHUNK = Tensor("AUDIO", "TYPE_FP32", (-1,), ragged="always")  # a session's audio as it arrives, batch 1

# A chat turn (voice_chat, voice_chat_stream): speech and/or text in, the reply voice, sampling.
HISTORY = _string("HISTORY").but(optional=True)
CHAT_TURN_INPUTS = (
    Tensor("AUDIO", "TYPE_FP32", (-1, -1), optional=True),
    SAMPLE_RATE.but(optional=True),
    TEXT.but(optional=True),
    HISTORY,
    *VOICE,
    Tensor("REPLY_AUDIO", "TYPE_BOOL", (1,), optional=True),
    *SAMPLING,
    TTS_MAX_NEW_TOKENS,
)
# A realtime session's options (its first request only); clients send each from their attribute of the same name,
# lower-cased (clients/realtime_client.py, gateway/realtime.py).
SESSION_OPTIONS = (
    SEED,
    Tensor("SPECULATION", "TYPE_BOOL", (1,), optional=True),
    MAX_NEW_TOKENS,
    TTS_MAX_NEW_TOKENS,
)
REPLY_TEXT, USER_TRANSCRIPT, TEXT_DELTA = _string("REPLY_TEXT"), _string("USER_TRANSCRIPT"), _string("TEXT_DELTA")


def _flow_id_input(name: str) -> Tensor:
    return Tensor(name, "TYPE_INT64", (-1,), ragged="cpu")


def _length(name: str) -> Tensor:
    return Tensor(name, "TYPE_INT64", (1,), scalar=True)


# By template folder (model_repository/<template>); a template served under several names shares its I/O.
MODELS: dict[str, ModelIO] = {
    "tokenizer": ModelIO(
        inputs=(Tensor("AUDIO", "TYPE_FP32", (-1, -1), ragged="always"), SAMPLE_RATE),
        outputs=(AUDIO_IDS, AUDIO_IDS.but(name="VQ02"), AUDIO_IDS.but(name="VQ06"), _string("AUDIO_STRING")),
    ),
    "tts_frontend": ModelIO(
        inputs=FRONTEND_INPUTS,
        outputs=(Tensor("INPUT_IDS", "TYPE_INT32", (-1,)), PROMPT_TOKENS, PROMPT_MEL, SPEAKER_EMBEDDING,
                 _string("DECODER")),
    ),
    "tts_llm": ModelIO(
        inputs=(Tensor("INPUT_IDS", "TYPE_INT32", (-1,), optional=True), *SAMPLING, CANCEL),
        outputs=(Tensor("OUTPUT_IDS", "TYPE_INT32", (-1,)), ERROR),
    ),
    "tts": ModelIO(
        inputs=(*FRONTEND_INPUTS, *SAMPLING),
        outputs=(
            AUDIO_IDS,
            Tensor("TOKENS", "TYPE_INT64", (-1,)),
            Tensor("TOKENS_LEN", "TYPE_INT64", (1,)),
            PROMPT_TOKENS,
            Tensor("PROMPT_TOKENS_LEN", "TYPE_INT64", (1,)),
            PROMPT_MEL,
            Tensor("PROMPT_MEL_LEN", "TYPE_INT64", (1,)),
            SPEAKER_EMBEDDING,
            Tensor("FLOW_NOISE", "TYPE_FP32", (80, -1)),
            Tensor("SOURCE_PHASE", "TYPE_FP32", (9,)),
            Tensor("SOURCE_NOISE", "TYPE_FP32", (9, -1)),
            SAMPLE_RATE,
        ),
    ),
    "flow_decoder": ModelIO(
        inputs=(
            _flow_id_input("tokens"),
            _length("token_lens"),
            _flow_id_input("prompt_tokens"),
            _length("prompt_token_lens"),
            Tensor("prompt_mel", "TYPE_FP32", (-1, 80), ragged="cpu"),
            _length("prompt_mel_lens"),
            Tensor("speaker_embedding", "TYPE_FP32", (192,)),
            Tensor("noise", "TYPE_FP32", (80, -1), ragged="cpu"),
        ),
        outputs=(Tensor("mel", "TYPE_FP32", (80, -1)), _length("mel_lens")),
    ),
    "vocoder": ModelIO(
        inputs=(
            Tensor("mel", "TYPE_FP32", (80, -1), ragged="cpu"),
            _length("mel_lens"),
            Tensor("source_phase", "TYPE_FP32", (9,)),
            Tensor("source_noise", "TYPE_FP32", (9, -1), ragged="cpu"),
        ),
        outputs=(Tensor("wave", "TYPE_FP32", (-1,)), _length("wave_lens"), Tensor("f0", "TYPE_FP32", (-1,))),
    ),
    "ensemble_tts": ModelIO(inputs=(*FRONTEND_INPUTS, *SAMPLING), outputs=(WAVEFORM, SAMPLE_RATE, AUDIO_IDS)),
    "tts_stream": ModelIO(
        inputs=(TEXT.but(optional=True, note="required, except in a CANCEL request"), CANCEL, *VOICE, *SAMPLING),
        outputs=(WAVEFORM, SAMPLE_RATE, ERROR),
    ),
    "chat_llm": ModelIO(
        inputs=(_string("MESSAGES").but(optional=True), AUDIO_IDS.but(optional=True), _string("MODE").but(optional=True),
                *SAMPLING, CANCEL),
        outputs=(TEXT_DELTA, ERROR),
    ),
    "voice_chat": ModelIO(inputs=CHAT_TURN_INPUTS, outputs=(REPLY_TEXT, USER_TRANSCRIPT, WAVEFORM, SAMPLE_RATE)),
    "voice_chat_stream": ModelIO(
        inputs=(*CHAT_TURN_INPUTS, CANCEL), outputs=(TEXT_DELTA, USER_TRANSCRIPT, WAVEFORM, SAMPLE_RATE, ERROR)
    ),
    "chat_reply": ModelIO(
        inputs=(AUDIO_IDS.but(optional=True), TEXT.but(optional=True), HISTORY, *SAMPLING),
        outputs=(REPLY_TEXT, USER_TRANSCRIPT),
    ),
    "ensemble_chat": ModelIO(
        inputs=(
            Tensor("AUDIO", "TYPE_FP32", (-1, -1)),
            SAMPLE_RATE.but(name="AUDIO_SAMPLE_RATE"),
            TEXT.but(optional=True),
            HISTORY,
            *VOICE,
            *SAMPLING,
            TTS_MAX_NEW_TOKENS,
        ),
        outputs=(REPLY_TEXT, USER_TRANSCRIPT, WAVEFORM, SAMPLE_RATE),
    ),
    "vad": ModelIO(
        inputs=(AUDIO_CHUNK, SAMPLE_RATE.but(optional=True)),
        outputs=(Tensor("PROBABILITY", "TYPE_FP32", (-1,)), Tensor("FIRST_WINDOW", "TYPE_INT64", (1,))),
    ),
    "stream_tokenizer": ModelIO(inputs=(AUDIO_CHUNK, SAMPLE_RATE.but(optional=True)), outputs=(AUDIO_IDS,)),
    "realtime_session": ModelIO(
        inputs=(
            AUDIO_CHUNK,
            SAMPLE_RATE.but(optional=True),
            SPEAKER,
            *SESSION_OPTIONS,
            # One JSON control message per request: client-driven turns (stepaudio/realtime/turns.py).
            _string("CONTROL").but(optional=True),
        ),
        outputs=(_string("EVENT"), WAVEFORM),
    ),
}
