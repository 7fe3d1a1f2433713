"""Audio in and out of the gateway.

Uploads are decoded with libsndfile (wav, flac, ogg/vorbis, ...) and, failing that, with FFmpeg through PyAV
(mp3, aac/m4a, webm/opus from a browser's MediaRecorder, ...). Responses are encoded incrementally, so each chunk
that ``tts_stream`` produces leaves as bytes at once: raw s16le, a WAV header with open-ended sizes (the length is
unknown while streaming), or an FFmpeg muxer writing to a non-seekable sink (mp3, ogg/opus, adts/aac). FLAC is the
exception: it leaves whole at the end, because a streamed FLAC header has no length and libsndfile (``soundfile``)
then refuses to read it.
"""

from __future__ import annotations

import io
import struct
import time
from dataclasses import dataclass

import numpy as np

from stepaudio.tts.limits import MAX_PROMPT_SECONDS

RESPONSE_FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")
MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}
# format → (FFmpeg muxer, encoder)
_FFMPEG = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac")}
_OPEN_ENDED = 0xFFFFFFFF


@dataclass(frozen=True)
class DecodeLimits:
    """What an uploaded file may hold; checked on the header before decoding and again while decoding."""

    max_seconds: float = MAX_PROMPT_SECONDS
    min_rate: int = 8000
    max_rate: int = 192000
    max_channels: int = 8
    output_rate: int = 48000  # higher rates are resampled down to this while decoding
    timeout_s: float = 10.0  # wall time of one decode, checked between packets

    def validate(self) -> None:
        if not (self.max_seconds > 0 and 0 < self.min_rate <= self.max_rate and self.max_channels >= 1
                and self.output_rate >= self.min_rate and self.timeout_s > 0):
            raise ValueError(f"inconsistent decode limits {self}")


class AudioDurationError(ValueError):
    """The upload is longer than ``max_seconds``: ``seconds`` when its header states its length, None when decoding
    stopped at the cap (so a caller words it once, whichever step found it)."""

    def __init__(self, seconds: float | None, max_seconds: float):
        self.seconds, self.max_seconds = seconds, max_seconds
        if seconds is None:
            super().__init__(f"audio is longer than {max_seconds:g} s")
        else:
            super().__init__(f"audio is {seconds:.2f} s; at most {max_seconds:g} s is accepted")


# The containers a client may upload (OpenAI's audio inputs: wav, flac, mp3, ogg, webm, mp4/m4a; plus adts/aac and
# aiff), found from their first bytes and passed to FFmpeg by name: FFmpeg never probes, so no playlist, SDP, concat
# script or image demuxer ever sees the bytes (they would open files, sockets or listeners).
CONTAINERS = ("wav", "flac", "mp3", "aac", "ogg", "matroska", "mp4", "aiff")
# Audio codecs, by FFmpeg's codec id name.
CODECS = frozenset({
    "pcm_u8", "pcm_s8", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be", "pcm_f32le",
    "pcm_f32be", "pcm_f64le", "pcm_f64be", "pcm_alaw", "pcm_mulaw", "adpcm_ms", "adpcm_ima_wav",
    "flac", "alac", "mp3", "mp2", "aac", "vorbis", "opus",
})
# Containers whose header states the exact length (the others may estimate it from the bitrate, or have none).
_EXACT_LENGTH = frozenset({"wav", "flac", "mp4", "aiff"})
_SUPPORTED = "send wav, flac, mp3, ogg (vorbis/opus), webm, m4a/mp4 or aac"
_FFMPEG_OPTIONS = {
    "format_whitelist": ",".join(CONTAINERS),
    # The input is an in-memory file; a demuxer that tries to open anything else (a nested URL) finds no protocol.
    "protocol_whitelist": "none",
    "enable_drefs": "0",  # mov/mp4: never follow data references to other files
}


def sniff_container(data: bytes) -> str | None:
    """The container of an upload from its first bytes, or None when it is not one of ``CONTAINERS``."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # webm too
    if head[4:8] == b"ftyp":
        return "mp4"  # m4a, mov
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # layer bits 00: ADTS
    return None


def decode_audio(data: bytes, limits: DecodeLimits = DecodeLimits()) -> tuple[np.ndarray, int]:
    """(float32 mono wave of shape (1, samples), sample rate) of an uploaded audio file, within ``limits``.

    Bad, unsupported or over-limit input raises ValueError. Work and memory are bounded before and while decoding:
    the header's rate, channels and (where exact) length are checked first; then packets are decoded one at a time,
    each downmixed to mono (and resampled above ``output_rate``) at once, and decoding stops as soon as the output
    passes ``max_seconds`` or the decode passes ``timeout_s``. Peak memory is thus about the upload plus
    ``max_seconds`` of mono float32 at ``output_rate``, whatever the file claims (docs/hardening.md#audio-uploads).
    """
    import av

    container_name = sniff_container(data)
    if container_name is None:
        raise ValueError(f"could not decode the audio file: not a supported audio container ({_SUPPORTED})")
    deadline = time.monotonic() + limits.timeout_s
    try:
        with av.open(io.BytesIO(data), mode="r", format=container_name, container_options=dict(_FFMPEG_OPTIONS),
                     metadata_errors="ignore") as container:
            stream = _checked_stream(container, container_name, limits)
            return _decode_stream(container, stream, limits, deadline)
    except av.error.FFmpegError as exc:
        raise ValueError(f"could not decode the audio file: {exc}") from exc
    except (UnicodeDecodeError, OverflowError, IndexError, KeyError, TypeError) as exc:  # a header PyAV cannot map
        raise ValueError(f"could not decode the audio file: {type(exc).__name__}") from exc


def _checked_stream(container, container_name: str, limits: DecodeLimits):
    """The audio stream, after refusing what its header says is out of bounds."""
    from av.stream import Disposition

    for stream in container.streams:
        if stream.type == "video" and not stream.disposition & Disposition.attached_pic:  # cover art is fine
            raise ValueError("the file holds video; upload audio only")
    if not container.streams.audio:
        raise ValueError("could not decode the audio file: it has no audio stream")
    stream = container.streams.audio[0]
    codec = stream.codec_context
    if codec is None or codec.codec is None or codec.codec.canonical_name not in CODECS:  # None: FFmpeg has no decoder
        name = codec.codec.canonical_name if codec is not None and codec.codec is not None else "unknown"
        raise ValueError(f"audio codec {name!r} is not accepted ({_SUPPORTED})")
    rate, channels = int(codec.sample_rate or 0), int(codec.channels or 0)
    if not limits.min_rate <= rate <= limits.max_rate:
        raise ValueError(f"sample rate {rate} Hz is outside {limits.min_rate}–{limits.max_rate}")
    if not 1 <= channels <= limits.max_channels:
        raise ValueError(f"the file has {channels} channels; at most {limits.max_channels} are accepted")
    if container_name in _EXACT_LENGTH and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > limits.max_seconds:
            raise AudioDurationError(seconds, limits.max_seconds)
    return stream


def _decode_stream(container, stream, limits: DecodeLimits, deadline: float) -> tuple[np.ndarray, int]:
    """Packet by packet: each decoded frame becomes float at the output rate (libswresample, no rematrix), then
    the mean of its channels (the downmix the voice store always used) is kept; nothing else is held."""
    import av

    source_rate = int(stream.codec_context.sample_rate)
    rate = min(source_rate, limits.output_rate)
    cap = int(limits.max_seconds * rate) + 1  # one past the limit: the caller reports "too long", never a cut file
    resampler = None
    parts: list[np.ndarray] = []
    total = 0

    def keep(frames) -> None:
        nonlocal total
        for out in frames:
            # Interleaved (PyAV 18's to_ndarray crashes on planar 8-channel frames): one row per sample instant.
            mono = out.to_ndarray().reshape(-1, len(out.layout.channels)).mean(axis=1, dtype=np.float32)[None]
            parts.append(mono)
            total += mono.shape[1]

    for packet in container.demux(stream):
        if time.monotonic() > deadline:
            raise ValueError(f"decoding took longer than {limits.timeout_s:g} s")
        for frame in packet.decode():
            if frame.sample_rate != source_rate:
                raise ValueError("the sample rate changes inside the file")
            if resampler is None:  # a frame that changes layout later is refused by the resampler (ValueError)
                resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
            keep(resampler.resample(frame))
        if total > cap:
            raise AudioDurationError(None, limits.max_seconds)
    if resampler is not None:
        keep(resampler.resample(None))
    if not total:
        raise ValueError("the audio file holds no samples")
    if total > cap:
        raise AudioDurationError(None, limits.max_seconds)
    return np.concatenate(parts, axis=1), rate


def to_s16le(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int = _OPEN_ENDED) -> bytes:
    """44-byte mono s16le header; the default open-ended sizes mark a stream of unknown length."""
    riff = _OPEN_ENDED if data_bytes == _OPEN_ENDED else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class _Sink:
    """Write-only: FFmpeg sees a non-seekable output and writes a streamable file."""

    def __init__(self):
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class StreamEncoder:
    """``encode(chunk)`` → bytes ready to send now (may be empty while an encoder fills a frame); ``finish()`` → the rest."""

    def __init__(self, fmt: str, sample_rate: int):
        if fmt not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}")
        self.format, self.sample_rate = fmt, sample_rate
        self._header_sent = False
        self._container = self._stream = None
        self._held: list[np.ndarray] = []  # flac: samples until finish()
        if fmt in _FFMPEG:
            self._open_ffmpeg(*_FFMPEG[fmt])

    def _open_ffmpeg(self, muxer: str, codec: str) -> None:
        import av

        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=muxer)
        rates = av.codec.Codec(codec, "w").audio_rates
        # Opus has no 22.05 kHz mode: take the next supported rate up (the codec context resamples).
        rate = self.sample_rate if not rates or self.sample_rate in rates else min((r for r in rates if r > self.sample_rate), default=max(rates))
        self._stream = self._container.add_stream(codec, rate=rate, layout="mono")
        self._pts = 0

    def encode(self, wave: np.ndarray) -> bytes:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if self.format == "pcm":
            return to_s16le(wave)
        if self.format == "wav":
            head = b"" if self._header_sent else wav_header(self.sample_rate)
            self._header_sent = True
            return head + to_s16le(wave)
        if self.format == "flac":
            self._held.append(wave)
            return b""
        if wave.size:
            import av

            frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.sample_rate, self._pts
            self._pts += wave.size
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self.format == "flac":
            import soundfile

            out = io.BytesIO()
            held = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
            soundfile.write(out, held, self.sample_rate, format="FLAC", subtype="PCM_16")
            return out.getvalue()
        if self._container is None:
            return self.encode(np.zeros(0, np.float32)) if not self._header_sent and self.format == "wav" else b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        return self._sink.take()

    def close(self) -> None:
        """Release FFmpeg state of an abandoned stream (client gone)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - a half-written stream may fail to finalise; nothing to keep
                pass
            self._container = None


def encode_whole(fmt: str, wave: np.ndarray, sample_rate: int) -> bytes:
    """One complete file; WAV gets its exact sizes (nothing is streamed)."""
    if fmt == "wav":
        pcm = to_s16le(np.asarray(wave, np.float32).reshape(-1))
        return wav_header(sample_rate, len(pcm)) + pcm
    encoder = StreamEncoder(fmt, sample_rate)
    return encoder.encode(wave) + encoder.finish()
