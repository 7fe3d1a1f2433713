"""Streaming voice-activity detection with Silero VAD (the ``silero-vad`` package's pretrained ONNX, run with ONNX
Runtime).

The model (``silero_vad/data/silero_vad.onnx``) takes, per stream, a 16 kHz window of 512 new samples preceded by the
last 64 samples of the previous window (``input`` (batch, 576) float32), its recurrent ``state`` (2, batch, 128)
float32 and ``sr`` (int64 scalar 16000); it returns the speech probability (batch, 1) and the next state. This is how
the package's own ``OnnxWrapper`` drives it; we keep the 64-sample context and the state per stream.

``VadStream.feed(chunk)`` takes audio at the stream's rate in pieces of any size, resamples it to 16 kHz
(``stepaudio.audio.resample``, bit-identical however the audio is cut) and returns one ``VadFrame`` per completed
512-sample window (32 ms). Several streams' windows run as one batch with ``run_batched``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from stepaudio.audio.resample import Resampler
from stepaudio.audio.validate import validate_sample_rate, validate_waveform
from stepaudio.tokenizer.ort_session import create_session  # CUDA EP where offered

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 512  # 32 ms at 16 kHz: the only window the 16 kHz model takes
CONTEXT_SAMPLES = 64  # samples of the previous window the model sees in front of each new one
STATE_SHAPE = (2, 128)  # per stream; the model's state is (2, batch, 128)
WINDOW_SECONDS = WINDOW_SAMPLES / SAMPLE_RATE


def default_model_path() -> Path:
    """The pretrained model shipped inside the ``silero-vad`` wheel."""
    return Path(str(resources.files("silero_vad") / "data" / "silero_vad.onnx"))


@dataclass(frozen=True)
class VadFrame:
    start_s: float  # stream time of the window's first sample (16 kHz clock)
    probability: float  # speech probability of the window, 0…1


class SileroVad:
    """One ONNX Runtime session shared by every stream (the recurrent state lives in each ``VadStream``)."""

    def __init__(self, model_path: str | Path | None = None, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = create_session(model_path or default_model_path(), options)
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"not a Silero VAD v5/v6 ONNX model: inputs {sorted(names)}")

    def run(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``windows`` (batch, 64 + 512) float32, ``states`` (2, batch, 128) → probabilities (batch,), new states."""
        probability, state = self.session.run(
            None, {"input": windows.astype(np.float32, copy=False), "state": states.astype(np.float32, copy=False),
                   "sr": np.array(SAMPLE_RATE, dtype=np.int64)})
        return probability.reshape(-1), state

    def stream(self, sample_rate: int) -> VadStream:
        return VadStream(self, sample_rate)


class VadStream:
    """One audio stream's VAD state: resampler, unconsumed 16 kHz samples, model context and recurrent state."""

    def __init__(self, vad: SileroVad, sample_rate: int):
        self.vad = vad
        self.sample_rate = validate_sample_rate(sample_rate)
        self._resampler = Resampler(self.sample_rate, SAMPLE_RATE)
        self._pending = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self.state = np.zeros((STATE_SHAPE[0], STATE_SHAPE[1]), dtype=np.float32)
        self.windows_done = 0

    def feed(self, chunk: np.ndarray) -> list[VadFrame]:
        """Audio at the stream's rate (any length; mono or (channels, samples)) → a frame per completed window."""
        self.push(chunk)
        return self._run_windows()

    def push(self, chunk: np.ndarray) -> None:
        """Take audio without running the model (``take_windows`` + ``run_batched`` run it)."""
        if isinstance(chunk, np.ndarray) and chunk.ndim in (1, 2) and chunk.shape[-1] == 0:
            return
        mono = validate_waveform(chunk, self.sample_rate, max_seconds=None)
        self._pending = np.concatenate([self._pending, self._resampler.feed(mono)])

    def take_windows(self) -> np.ndarray:
        """The complete windows waiting (n, 64 + 512), each with its context; advances the context (``run`` must
        follow with these windows)."""
        count = self._pending.shape[0] // WINDOW_SAMPLES
        windows = np.empty((count, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        for i in range(count):
            new = self._pending[i * WINDOW_SAMPLES:(i + 1) * WINDOW_SAMPLES]
            windows[i, :CONTEXT_SAMPLES] = self._context
            windows[i, CONTEXT_SAMPLES:] = new
            self._context = new[-CONTEXT_SAMPLES:]
        self._pending = self._pending[count * WINDOW_SAMPLES:]
        return windows

    def _run_windows(self) -> list[VadFrame]:
        return run_batched(self.vad, [(self, self.take_windows())])[0]


def run_batched(vad: SileroVad, work: list[tuple[VadStream, np.ndarray]]) -> list[list[VadFrame]]:
    """Several streams' windows (from ``take_windows``) in lock-step batches: step k runs window k of every stream
    that has one, as one model call. Streams must be distinct. Frames per stream, as ``feed`` would return them."""
    if len({id(stream) for stream, _ in work}) != len(work):
        raise ValueError("run_batched takes each stream once")
    frames: list[list[VadFrame]] = [[] for _ in work]
    for step in range(max((windows.shape[0] for _, windows in work), default=0)):
        rows = [i for i, (_, windows) in enumerate(work) if windows.shape[0] > step]
        states = np.stack([work[i][0].state for i in rows], axis=1)
        probabilities, states = vad.run(np.stack([work[i][1][step] for i in rows]), states)
        for row, i in enumerate(rows):
            stream = work[i][0]
            stream.state = states[:, row, :]
            frames[i].append(VadFrame(stream.windows_done * WINDOW_SECONDS, float(probabilities[row])))
            stream.windows_done += 1
    return frames
