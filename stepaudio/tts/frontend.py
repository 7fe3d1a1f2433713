"""Everything the TTS LLM and decoder need for one request, from text + voice.

    frontend = TTSFrontend.from_checkpoints(tts_dir, tokenizer_dir, voices_dir)
    prepared = frontend.prepare(TTSRequest("(高兴1)你好", speaker="Tingting"))
    prepared.prompt_ids          # the Step-Audio-TTS-3B prompt (see ``prompt.py``)
    prepared.voice               # prompt ids / mel / CAM++ embedding for the decoder
    prepared.music               # "RAP" / "哼唱" → the music decoder, None → the speech decoder
    decoder_tokens(generated)    # LLM output → decoder ids, validated
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stepaudio.audio.io import load_audio
from stepaudio.audio.resample import resample
from stepaudio.audio.validate import to_mono, validate_waveform
from stepaudio.checkpoints import layout
from stepaudio.decoder.checkpoint import load_config as load_decoder_config
from stepaudio.decoder.frontend import prompt_mel
from stepaudio.llm.tokenizer import Step1Tokenizer
from stepaudio.tokenizer import AudioTokenizer, SpeakerEncoder
from stepaudio.tts.decoder_ids import decoder_tokens  # noqa: F401 - re-exported: part of this module's API
from stepaudio.tts.limits import MAX_PROMPT_SECONDS, MAX_TEXT_CHARS
from stepaudio.tts.prompt import TextTokenizer, build_tts_prompt
from stepaudio.tts.tags import parse_style_tags
from stepaudio.tts.voices import PresetVoices, VoiceCache, VoiceFeatures, VoicePrompt


@dataclass
class TTSRequest:
    """A preset ``speaker`` or a cloned voice (``prompt_audio`` + ``prompt_sample_rate`` + ``prompt_text``)."""

    text: str
    speaker: str | None = None
    prompt_audio: np.ndarray | None = None
    prompt_sample_rate: int | None = None
    prompt_text: str | None = None

    def validate(self, max_text_chars: int = MAX_TEXT_CHARS) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text is empty")
        if len(self.text) > max_text_chars:
            raise ValueError(f"text has {len(self.text)} characters; the limit is {max_text_chars}")
        cloning = self.prompt_audio is not None
        if cloning == bool(self.speaker):
            raise ValueError("give either a preset speaker or prompt audio with its transcript, not both or neither")
        if cloning:
            if self.prompt_sample_rate is None:
                raise ValueError("prompt audio needs its sample rate")
            if not self.prompt_text or not self.prompt_text.strip():
                raise ValueError("prompt audio needs its transcript (prompt text)")
            if len(self.prompt_text) > max_text_chars:
                raise ValueError(f"prompt text has {len(self.prompt_text)} characters; the limit is {max_text_chars}")


@dataclass(frozen=True)
class PreparedTTS:
    prompt_ids: list[int]
    voice: VoicePrompt
    music: str | None


class VoiceFeaturizer:
    """Reference ``preprocess_prompt_wav``: tokens of the trimmed, normalised prompt; mel and CAM++ embedding of
    the untrimmed one."""

    def __init__(self, audio_tokenizer: AudioTokenizer, speaker_encoder: SpeakerEncoder, mel_config):
        self.audio_tokenizer = audio_tokenizer
        self.speaker_encoder = speaker_encoder
        self.mel_config = mel_config

    def __call__(self, wave: np.ndarray, sample_rate: int) -> VoiceFeatures:
        code = self.audio_tokenizer.tokenize(wave, sample_rate, trim=True).ids
        if not code:
            raise ValueError("prompt audio is too short to give any audio tokens")
        mel = prompt_mel(resample(wave, sample_rate, self.mel_config.sampling_rate), self.mel_config)
        embedding = self.speaker_encoder.embed(wave, sample_rate)
        return VoiceFeatures(tuple(code), mel, embedding)


def _read_preset(file) -> tuple[np.ndarray, int]:
    wave, rate = load_audio(file)
    return to_mono(np.asarray(wave, dtype=np.float32)), rate


class TTSFrontend:
    def __init__(
        self,
        text_tokenizer: TextTokenizer,
        voice_cache: VoiceCache,
        presets: PresetVoices | None = None,
        max_text_chars: int = MAX_TEXT_CHARS,
        max_prompt_seconds: float = MAX_PROMPT_SECONDS,
        add_bos_to_segments: bool = True,
    ):
        self.text_tokenizer = text_tokenizer
        self.voice_cache = voice_cache
        self.presets = presets
        self.max_text_chars = max_text_chars
        self.max_prompt_seconds = max_prompt_seconds
        self.add_bos_to_segments = add_bos_to_segments

    @classmethod
    def from_checkpoints(
        cls,
        tts_dir: str | Path,
        tokenizer_dir: str | Path,
        voices_dir: str | Path | None = None,
        voice_cache_entries: int = 256,
        vq02_onnx: str | Path | None = None,
        **limits,
    ) -> TTSFrontend:
        tts_dir = Path(tts_dir)
        speech_dir = tts_dir / layout.SPEECH_DECODER_DIR
        featurize = VoiceFeaturizer(
            AudioTokenizer.from_checkpoint(tokenizer_dir, backend="onnx", vq02_onnx=vq02_onnx, threads=1),
            SpeakerEncoder.from_onnx(speech_dir / layout.CAMPPLUS_ONNX, threads=1),
            load_decoder_config(speech_dir).mel,
        )
        cache = VoiceCache(featurize, voice_cache_entries)
        presets = PresetVoices(Path(voices_dir), cache, _read_preset) if voices_dir else None
        tokenizer_config = json.loads((tts_dir / layout.LLM_TOKENIZER_CONFIG).read_text(encoding="utf-8"))
        return cls(
            Step1Tokenizer.from_pretrained(tts_dir),
            cache,
            presets,
            # LlamaTokenizer adds BOS unless the config says otherwise; the published TTS config does not say.
            add_bos_to_segments=bool(tokenizer_config.get("add_bos_token", True)),
            **limits,
        )

    def voice(self, request: TTSRequest, music: str | None) -> tuple[VoicePrompt, str]:
        """The voice prompt and the speaker name the system prompt names ("" for a cloned voice)."""
        if request.prompt_audio is not None:
            wave = validate_waveform(request.prompt_audio, request.prompt_sample_rate, self.max_prompt_seconds)
            return self.voice_cache.voice(wave, int(request.prompt_sample_rate), request.prompt_text), ""
        if self.presets is None:
            raise ValueError(f"unknown speaker {request.speaker!r}: this server has no preset voices")
        return self.presets.voice(request.speaker, music), request.speaker

    def prepare(self, request: TTSRequest) -> PreparedTTS:
        request.validate(self.max_text_chars)
        styled = parse_style_tags(request.text)
        voice, speaker_name = self.voice(request, styled.music)
        ids = build_tts_prompt(
            self.text_tokenizer,
            request.text,
            styled,
            voice.prompt_text,
            voice.prompt_code,
            speaker_name,
            self.add_bos_to_segments,
        )
        return PreparedTTS(ids, voice, styled.music)
