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

import numpy as np

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


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """(float32 wave of shape (channels, samples), sample rate) from the bytes of an audio file."""
    import soundfile

    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return np.ascontiguousarray(wave.T), int(rate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        pass
    return _decode_with_ffmpeg(data)


def _decode_with_ffmpeg(data: bytes) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ValueError("the file has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            # Planar float keeps (channels, samples) per frame whatever the codec's native sample format.
            resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
            parts = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
            parts += [out.to_ndarray() for out in resampler.resample(None)]
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise ValueError(f"could not decode the audio file: {exc}") from exc
    if not parts:
        raise ValueError("the audio file holds no samples")
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32), int(rate)


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
