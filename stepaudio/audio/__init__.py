"""Audio front end: reading, validation, resampling, normalisation and spectral features.

Public API::

    load_audio(path_or_file) -> (wave, sample_rate)      # float32, (samples,) or (channels, samples)
    validate_waveform(wave, sample_rate, max_seconds=MAX_INPUT_SECONDS) -> mono float32   # ValueError on bad input
    to_mono(wave); resample(wave, src_rate, dst_rate); Resampler(src_rate, dst_rate)  # streaming, bit-exact
    energy_normalize(wave); trim_silence(wave, sample_rate)
    kaldi_fbank(...); log_mel_spectrogram(wave)           # Kaldi fbank (vq02, CAM++), Whisper log-mel (vq06)
"""

from stepaudio.audio.io import load_audio
from stepaudio.audio.kaldi import kaldi_fbank
from stepaudio.audio.preprocess import energy_normalize, trim_silence
from stepaudio.audio.resample import Resampler, resample
from stepaudio.audio.validate import MAX_INPUT_SECONDS, to_mono, validate_sample_rate, validate_waveform
from stepaudio.audio.whisper_mel import log_mel_spectrogram

__all__ = [
    "MAX_INPUT_SECONDS",
    "Resampler",
    "energy_normalize",
    "kaldi_fbank",
    "load_audio",
    "log_mel_spectrogram",
    "resample",
    "to_mono",
    "trim_silence",
    "validate_sample_rate",
    "validate_waveform",
]
