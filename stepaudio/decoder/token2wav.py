"""Token2Wav: decoder ids (0…5119) + voice prompt → 22.05 kHz wave, offline, batched and streaming.

Randomness is explicit. ``DecoderNoise.from_seed`` draws, from one seed, the flow's initial noise (80 × frames of
[prompt ; target]), the sine source's harmonic phases (9) and its additive noise (9 × samples). Each is drawn
time-major from its own numpy stream, so a longer draw starts with the shorter one: the streaming decoder and the
offline call with the same seed see the same noise at the same frame/sample.

Streaming (``Token2Wav.stream``): tokens arrive in chunks. Each time ``chunk_tokens`` + ``lookahead_tokens`` new ids
are available, the flow is re-run over a window of the ids so far (the prompt plus at most ``max_window_tokens``
ids, ending ``lookahead_tokens`` past the commit point) and the mel frames of the next ``chunk_tokens`` are
committed; the first ``crossfade_frames`` of each commit are cross-faded (raised cosine) with the previous window's
prediction of the same frames. The vocoder runs on the committed mel with ``vocoder_context_frames`` of context on
each side, holds back the last frames until their right context exists, and carries the sine-source phase from the
final f0 of earlier frames (caches: committed mel, final f0, emitted frame count). With that context the HiFT part
is exact, so the stream differs from the offline output only through the flow's windowing (its attention, GroupNorm
statistics and length-regulator grid see the window, not the whole utterance). Measured on the tiny test checkpoint
(random weights, fixed seed, 150 ids fed 17 at a time, defaults): joined stream vs offline max |Δ| = 0.0026,
SNR 39 dB (300 ids: 0.0037, 37.5 dB); the vocoder part alone matches to 6e-8. Per commit the flow costs one window
(≤ prompt + ``max_window_tokens`` ids), so an utterance of n ids costs about n / chunk_tokens windows. Nothing else
grows with the stream's position: noise is drawn forward once per stream (``NoiseTape``), the source phase is summed
once per frame, and only the mel / f0 frames a later window reaches are held (``bench/bench_stream_chunks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stepaudio.checkpoints import layout
from stepaudio.decoder.checkpoint import load_config, load_flow, load_hift
from stepaudio.decoder.config import DecoderConfig
from stepaudio.decoder.feeds import (  # noqa: F401 - re-exported: the runners' I/O contract and its checks
    FLOW_INPUTS,
    FLOW_OUTPUTS,
    VOCODER_INPUTS,
    VOCODER_OUTPUTS,
    FlowBatching,
    VocoderBatching,
    flow_batching,
    flow_feed_validator,
    length_buckets,
    validate_flow_feeds,
    validate_vocoder_feeds,
    vocoder_batching,
    vocoder_feed_validator,
)
from stepaudio.decoder.flow import MaskedDiffWithXvec
from stepaudio.decoder.frontend import prompt_mel as compute_prompt_mel
from stepaudio.decoder.hift import HiFTGenerator, phase_at, phase_cycles
from stepaudio.decoder.noise import (  # noqa: F401 - re-exported: token2wav is their documented home
    DecoderNoise,
    NoiseTape,
    flow_noise,
    flow_noise_shape,
    mel_frames_for_tokens,
    source_noise,
    source_noise_shape,
    source_phase,
)


def _ids(values, name: str, vocab: int, allow_empty: bool) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of ids, got shape {array.shape}")
    if array.size == 0:
        if not allow_empty:
            raise ValueError(f"{name} is empty")
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer ids, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains id {bad}; decoder ids must be in [0, {vocab}) (LLM id − 65536)")
    return array.astype(np.int64)


@dataclass
class Token2WavRequest:
    """One utterance: target ids, the voice prompt's ids, mel (T, 80) and CAM++ embedding (192,)."""

    tokens: np.ndarray
    prompt_tokens: np.ndarray
    prompt_mel: np.ndarray
    speaker_embedding: np.ndarray

    def validate(self, config: DecoderConfig) -> None:
        """Check ranges and shapes and normalise dtypes in place; raises ``ValueError``."""
        flow = config.flow
        self.tokens = _ids(self.tokens, "tokens", flow.vocab_size, allow_empty=False)
        self.prompt_tokens = _ids(self.prompt_tokens, "prompt_tokens", flow.vocab_size, allow_empty=True)
        mel = np.asarray(self.prompt_mel)
        if mel.ndim != 2 or mel.shape[1] != flow.output_size:
            raise ValueError(f"prompt_mel must have shape (frames, {flow.output_size}), got {mel.shape}")
        if mel.dtype.kind != "f" or not np.all(np.isfinite(mel)):
            raise ValueError("prompt_mel must be finite floats")
        if (mel.shape[0] == 0) != (self.prompt_tokens.size == 0):
            raise ValueError(
                f"prompt_tokens ({self.prompt_tokens.size}) and prompt_mel ({mel.shape[0]} frames) must be both "
                "empty or both non-empty"
            )
        spk = np.asarray(self.speaker_embedding)
        if spk.shape != (flow.spk_embed_dim,):
            raise ValueError(f"speaker_embedding must have shape ({flow.spk_embed_dim},), got {spk.shape}")
        if spk.dtype.kind != "f" or not np.all(np.isfinite(spk)):
            raise ValueError("speaker_embedding must be finite floats")
        self.prompt_mel = mel.astype(np.float32)
        self.speaker_embedding = spk.astype(np.float32)


def _pad_stack(arrays: list[np.ndarray], axis_len: int, dtype, tail_shape: tuple[int, ...] = ()) -> np.ndarray:
    out = np.zeros((len(arrays), axis_len) + tail_shape, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out


class Token2WavBase:
    """Everything but running the two graphs: validation, noise, padding a batch into the flow/vocoder feeds (the
    ONNX I/O contract, ``FLOW_INPUTS`` / ``VOCODER_INPUTS``), unpadding results, and streaming. A runner implements
    ``run_flow`` and ``run_vocoder`` — in-process PyTorch (``Token2Wav``), ONNX Runtime (``OnnxToken2Wav``), or the
    served ``flow_decoder`` / ``vocoder`` models over BLS — and every entry point behaves the same on each."""

    config: DecoderConfig

    def run_flow(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Feeds named ``FLOW_INPUTS`` → (mel (B, 80, T), mel_lens (B,))."""
        raise NotImplementedError

    def run_vocoder(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feeds named ``VOCODER_INPUTS`` → (wave (B, 256·T), wave_lens (B,), f0 (B, T))."""
        raise NotImplementedError

    @property
    def sample_rate(self) -> int:
        return self.config.hift.sampling_rate

    def prompt_mel(self, wave_22k: np.ndarray) -> np.ndarray:
        """(T, 80) log-mel of the untrimmed prompt wave at 22.05 kHz (reference ``_extract_speech_feat``)."""
        return compute_prompt_mel(wave_22k, self.config.mel)

    # -- offline --------------------------------------------------------------------------------------------
    def __call__(
        self,
        tokens,
        prompt_tokens,
        prompt_mel: np.ndarray,
        speaker_embedding: np.ndarray,
        noise: DecoderNoise | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """One utterance → float32 wave at 22.05 kHz, 256 samples per target mel frame."""
        request = Token2WavRequest(tokens, prompt_tokens, prompt_mel, speaker_embedding)
        return self.batch([request], [noise] if noise is not None else None, seed)[0]

    def batch(
        self, requests: list[Token2WavRequest], noises: list[DecoderNoise] | None = None, seed: int | None = None
    ) -> list[np.ndarray]:
        """Several utterances in one padded batch; row i equals ``self(*requests[i], noise=noises[i])``.

        Without ``noises`` request i uses ``DecoderNoise.from_seed(seed + i, ...)`` (a random seed if None).
        """
        noises = self._noises(requests, noises, seed)
        mels = self.token2mel(requests, [n.flow for n in noises])
        return self.mel2wav(mels, [n.source_phase for n in noises], [n.source_noise for n in noises])

    def _noises(
        self, requests: list[Token2WavRequest], noises: list[DecoderNoise] | None, seed: int | None
    ) -> list[DecoderNoise]:
        if not requests:
            raise ValueError("no requests")
        for request in requests:
            request.validate(self.config)
        if noises is None:
            base = int(np.random.SeedSequence().entropy % (2**62)) if seed is None else int(seed)
            return [
                DecoderNoise.from_seed(base + i, r.prompt_mel.shape[0], r.tokens.size, self.config)
                for i, r in enumerate(requests)
            ]
        if len(noises) != len(requests):
            raise ValueError(f"{len(noises)} noises for {len(requests)} requests")
        for request, noise in zip(requests, noises):
            noise.validate(request.prompt_mel.shape[0], request.tokens.size, self.config)
        return noises

    def flow_feeds(self, requests: list[Token2WavRequest], flow_noises: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Validated requests + their flow noise (80, frames) → one padded batch of ``FLOW_INPUTS``."""
        n_tok = max(r.tokens.size for r in requests)
        n_prompt = max(r.prompt_tokens.size for r in requests)
        n_pmel = max(r.prompt_mel.shape[0] for r in requests)
        width = n_pmel + self.config.flow.mel_frames_for_tokens(n_tok)
        noise = np.zeros((len(requests), self.config.flow.output_size, width), np.float32)
        for i, n in enumerate(flow_noises):
            # Each row's noise covers its own [prompt ; target] frames, which start at frame 0.
            noise[i, :, : n.shape[1]] = n
        tensors = [
            _pad_stack([r.tokens for r in requests], n_tok, np.int64),
            np.array([r.tokens.size for r in requests], np.int64),
            _pad_stack([r.prompt_tokens for r in requests], n_prompt, np.int64),
            np.array([r.prompt_tokens.size for r in requests], np.int64),
            _pad_stack([r.prompt_mel for r in requests], n_pmel, np.float32, (self.config.flow.output_size,)),
            np.array([r.prompt_mel.shape[0] for r in requests], np.int64),
            np.stack([r.speaker_embedding for r in requests]).astype(np.float32),
            noise,
        ]
        return dict(zip(FLOW_INPUTS, tensors))

    def vocoder_feeds(self, mels: list[np.ndarray], phases: list[np.ndarray], noises: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Mels (80, T_i) + source phases (9,) and noises (9, 256·T_i) → one padded batch of ``VOCODER_INPUTS``."""
        hop = self.config.hift.samples_per_frame
        frames = max(m.shape[1] for m in mels)
        mel = np.zeros((len(mels), mels[0].shape[0], frames), np.float32)
        noise = np.zeros((len(mels), self.config.hift.n_harmonic_channels, frames * hop), np.float32)
        for i, (m, n) in enumerate(zip(mels, noises)):
            mel[i, :, : m.shape[1]] = m
            noise[i, :, : n.shape[1]] = n
        lens = np.array([m.shape[1] for m in mels], np.int64)
        return dict(zip(VOCODER_INPUTS, (mel, lens, np.stack(phases).astype(np.float32), noise)))

    def token2mel(self, requests: list[Token2WavRequest], flow_noises: list[np.ndarray]) -> list[np.ndarray]:
        """Validated requests + their flow noise (80, frames) → target mels (80, frames_i) float32."""
        mel, lens = self.run_flow(self.flow_feeds(requests, flow_noises))
        return [mel[i, :, : int(n)] for i, n in enumerate(np.asarray(lens).reshape(-1))]

    def vocode(
        self, mels: list[np.ndarray], phases: list[np.ndarray], noises: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Mels (80, T_i) + source phases (9,) and noises (9, 256·T_i) → (wave (256·T_i,), f0 (T_i,)) each."""
        wave, wave_lens, f0 = self.run_vocoder(self.vocoder_feeds(mels, phases, noises))
        return [
            (wave[i, : int(n)].copy(), f0[i, : m.shape[1]].copy())
            for i, (n, m) in enumerate(zip(np.asarray(wave_lens).reshape(-1), mels))
        ]

    def mel2wav(self, mels: list[np.ndarray], phases: list[np.ndarray], noises: list[np.ndarray]) -> list[np.ndarray]:
        """Mels (80, T_i) + source phases (9,) and noises (9, 256·T_i) → waves (256·T_i,) float32."""
        return [wave for wave, _ in self.vocode(mels, phases, noises)]

    # -- streaming ------------------------------------------------------------------------------------------
    def stream(
        self,
        prompt_tokens,
        prompt_mel: np.ndarray,
        speaker_embedding: np.ndarray,
        seed: int | None = None,
        **options,
    ) -> Token2WavStream:
        """A stream for one utterance: ``feed(tokens) → wave chunk`` (possibly empty), then ``finish()``."""
        return Token2WavStream(self, prompt_tokens, prompt_mel, speaker_embedding, seed, **options)


@torch.inference_mode()
def run_torch_flow(flow: MaskedDiffWithXvec, feeds: dict[str, np.ndarray], device: torch.device | str = "cpu"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch flow on feeds named ``FLOW_INPUTS`` → (mel float32 whatever the flow's dtype, mel_lens)."""
    # Triton hands read-only arrays, which torch.from_numpy only takes with a warning.
    arrays = (np.asarray(feeds[name]) for name in FLOW_INPUTS)
    mel, lens = flow(*(torch.from_numpy(a if a.flags.writeable else a.copy()).to(device) for a in arrays))
    return mel.float().cpu().numpy(), lens.cpu().numpy()


class Token2Wav(Token2WavBase):
    """Token2Wav on the PyTorch flow and HiFT modules (CPU or CUDA)."""

    def __init__(self, config: DecoderConfig, flow: MaskedDiffWithXvec, hift: HiFTGenerator):
        self.config = config
        self.flow = flow
        self.hift = hift
        self.device = next(flow.parameters()).device

    @classmethod
    def from_checkpoint(
        cls, decoder_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Token2Wav:
        """Load a decoder folder. float32 is the default everywhere. ``dtype=torch.bfloat16`` is the opt-in fast flow
        (the reference casts its flow to bf16): on CUDA, and on CPUs with bf16 matrix units (AMX), where the flow runs
        ~2.9× faster at a measured cost of ~3 % mel error (docs/performance.md). HiFT stays float32, as in the
        reference. float16 is CUDA-only (CPU kernels gain nothing from it)."""
        device = torch.device(device)
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported flow dtype {dtype}")
        if dtype == torch.float16 and device.type == "cpu":
            raise ValueError("a float16 flow is for CUDA; on CPU use float32 or bfloat16")
        config = load_config(decoder_dir)
        return cls(config, load_flow(decoder_dir, config, device, dtype), load_hift(decoder_dir, config, device))

    def run_flow(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return run_torch_flow(self.flow, feeds, self.device)

    @torch.inference_mode()
    def run_vocoder(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outputs = self.hift(*(torch.from_numpy(feeds[name]).to(self.device) for name in VOCODER_INPUTS))
        return tuple(t.cpu().numpy() for t in outputs)


class OnnxToken2Wav(Token2WavBase):
    """Token2Wav on the exported ``flow_decoder.onnx`` and ``vocoder.onnx`` through ONNX Runtime."""

    def __init__(self, config: DecoderConfig, flow_onnx: str | Path, vocoder_onnx: str | Path, threads: int = 0, providers=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.config = config
        self.flow = ort.InferenceSession(str(flow_onnx), options, providers=providers)
        self.vocoder = ort.InferenceSession(str(vocoder_onnx), options, providers=providers)
        for session, path, inputs, outputs in (
            (self.flow, flow_onnx, FLOW_INPUTS, FLOW_OUTPUTS),
            (self.vocoder, vocoder_onnx, VOCODER_INPUTS, VOCODER_OUTPUTS),
        ):
            found = (tuple(i.name for i in session.get_inputs()), tuple(o.name for o in session.get_outputs()))
            if found != (inputs, outputs):
                raise ValueError(f"{path}: I/O {found} is not the contract {(inputs, outputs)}; re-export it (export/)")

    @classmethod
    def from_checkpoint(cls, decoder_dir: str | Path, **session_options) -> OnnxToken2Wav:
        """A decoder folder holding its exports (``python -m export.flow_onnx`` / ``export.vocoder_onnx``)."""
        decoder_dir = Path(decoder_dir)
        return cls(
            load_config(decoder_dir),
            decoder_dir / layout.FLOW_DECODER_ONNX,
            decoder_dir / layout.VOCODER_ONNX,
            **session_options,
        )

    def run_flow(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return tuple(self.flow.run(list(FLOW_OUTPUTS), feeds))

    def run_vocoder(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(self.vocoder.run(list(VOCODER_OUTPUTS), feeds))


class Token2WavStream:
    def __init__(
        self,
        decoder: Token2WavBase,
        prompt_tokens,
        prompt_mel: np.ndarray,
        speaker_embedding: np.ndarray,
        seed: int | None = None,
        chunk_tokens: int = 42,
        lookahead_tokens: int = 20,
        max_window_tokens: int = 500,
        crossfade_frames: int = 8,
        vocoder_context_frames: int = 24,
    ):
        if chunk_tokens < 1 or lookahead_tokens < 0 or crossfade_frames < 0:
            raise ValueError("chunk_tokens must be ≥ 1, lookahead_tokens and crossfade_frames ≥ 0")
        if vocoder_context_frames < 10:
            raise ValueError("vocoder_context_frames must be ≥ 10 (f0 predictor and source phase need it)")
        if max_window_tokens < chunk_tokens + lookahead_tokens:
            raise ValueError("max_window_tokens must cover chunk_tokens + lookahead_tokens")
        self.decoder = decoder
        self.config = decoder.config
        # Validate the prompt once with a placeholder target.
        prompt = Token2WavRequest(np.zeros(1, np.int64), prompt_tokens, prompt_mel, speaker_embedding)
        prompt.validate(self.config)
        self.prompt = prompt
        self.seed = int(np.random.SeedSequence().entropy % (2**62)) if seed is None else int(seed)
        self.chunk_tokens, self.lookahead_tokens = chunk_tokens, lookahead_tokens
        self.max_window_tokens, self.crossfade_frames = max_window_tokens, crossfade_frames
        self.context = vocoder_context_frames
        harmonics, channels = self.config.hift.n_harmonic_channels, self.config.flow.output_size
        self.phase = source_phase(self.seed, harmonics)
        # Per-chunk work must not grow with the stream's position: noise is drawn forward once (tapes), the source
        # phase is summed once per frame (cycles up to ``phase_frame``), and only the mel and f0 frames a later
        # vocoder window can reach are held (from ``tail_start``).
        self.flow_tape = NoiseTape.flow(self.seed, channels)
        self.prompt_noise = self.flow_tape.read(0, prompt.prompt_mel.shape[0])
        self.source_tape = NoiseTape.source(self.seed, harmonics)
        self.tokens: list[int] = []
        self.committed_tokens = 0
        self.committed_frames = 0
        self.mel_chunks: list[np.ndarray] = []  # every committed target frame, for ``mel``
        self.tail_start = 0  # global frame of mel_tail[:, 0] and f0_tail[0]
        self.mel_tail = np.zeros((channels, 0), np.float32)  # committed frames from tail_start
        self.pending = np.zeros((channels, 0), np.float32)  # prediction past the commit
        self.emitted_frames = 0  # frames whose audio has been returned
        self.f0_tail = np.zeros(0, np.float32)  # final f0 of frames from tail_start
        self.phase_frame, self.cycles = 0, np.zeros(harmonics)  # source cycles advanced before phase_frame
        self.finished = False

    @property
    def mel(self) -> np.ndarray:
        """(80, frames) every target frame committed so far."""
        return np.concatenate([self.mel_tail[:, :0], *self.mel_chunks], axis=1)

    def feed(self, tokens) -> np.ndarray:
        if self.finished:
            raise ValueError("stream already finished")
        new = _ids(tokens, "tokens", self.config.flow.vocab_size, allow_empty=True)
        self.tokens.extend(int(t) for t in new)
        chunks = []
        while len(self.tokens) - self.committed_tokens >= self.chunk_tokens + self.lookahead_tokens:
            self._commit(self.committed_tokens + self.chunk_tokens, final=False)
            chunks.append(self._vocode(final=False))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        if self.finished:
            raise ValueError("stream already finished")
        if not self.tokens:
            raise ValueError("tokens is empty")
        self.finished = True
        if self.committed_tokens < len(self.tokens):
            self._commit(len(self.tokens), final=True)
        return self._vocode(final=True)

    # -- flow window ----------------------------------------------------------------------------------------
    def _frames(self, n_tokens: int) -> int:
        return self.config.flow.mel_frames_for_tokens(n_tokens)

    def _commit(self, commit_tokens: int, final: bool) -> None:
        end = len(self.tokens) if final else min(len(self.tokens), commit_tokens + self.lookahead_tokens)
        start = max(0, end - self.max_window_tokens)
        window = np.asarray(self.tokens[start:end], np.int64)
        n_prompt = self.prompt.prompt_mel.shape[0]
        first = self._frames(start)
        width = self._frames(window.size)
        noise = np.concatenate([self.prompt_noise, self.flow_tape.read(n_prompt + first, n_prompt + first + width)], axis=1)
        request = Token2WavRequest(window, self.prompt.prompt_tokens, self.prompt.prompt_mel, self.prompt.speaker_embedding)
        request.validate(self.config)
        (mel,) = self.decoder.token2mel([request], [noise])
        # Global frame g is window frame g − first; a trailing frame the window lacks repeats its last one.
        done = self.committed_frames
        target = self._frames(len(self.tokens)) if final else self._frames(commit_tokens)
        local = np.clip(np.arange(done, target + (0 if final else self.crossfade_frames)) - first, 0, width - 1)
        fresh = mel[:, local]
        overlap = min(self.pending.shape[1], self.crossfade_frames, fresh.shape[1])
        if overlap:
            fade = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
            fresh[:, :overlap] = (1 - fade) * self.pending[:, :overlap] + fade * fresh[:, :overlap]
        keep = target - done
        self.mel_chunks.append(fresh[:, :keep])
        self.mel_tail = np.concatenate([self.mel_tail, fresh[:, :keep]], axis=1)
        self.committed_frames = target
        self.pending = fresh[:, keep:]
        self.committed_tokens = commit_tokens if not final else len(self.tokens)

    # -- vocoder with context -------------------------------------------------------------------------------
    def _vocode(self, final: bool) -> np.ndarray:
        hop, ctx = self.config.hift.samples_per_frame, self.context
        total = self.committed_frames
        stop = total if final else max(self.emitted_frames, total - ctx)
        if stop <= self.emitted_frames:
            return np.zeros(0, np.float32)
        first = max(0, self.emitted_frames - ctx)
        # Source phase carried over from frame 0 to this window's first frame; every frame before it already has its
        # final f0 (first ≤ the previous window's end − ctx, and ctx ≥ 10 > the f0 predictor's reach of 5). Frames
        # up to phase_frame were summed by earlier calls.
        self.cycles = phase_cycles(self.f0_tail[self.phase_frame - self.tail_start : first - self.tail_start],
                                   self.config.hift, self.cycles)
        self.phase_frame = first
        noise = self.source_tape.read(first * hop, total * hop)
        mel = np.ascontiguousarray(self.mel_tail[:, first - self.tail_start :])
        ((wave, f0),) = self.decoder.vocode([mel], [phase_at(self.phase, self.cycles)], [noise])
        # f0 of frames ≥ 5 away from this window's cut edges equals the offline f0: keep those as final.
        final_end = total if final else total - 5
        known = self.tail_start + self.f0_tail.shape[0]
        if final_end > known:
            self.f0_tail = np.concatenate([self.f0_tail, f0[known - first : final_end - first]])
        chunk = wave[(self.emitted_frames - first) * hop : (stop - first) * hop].copy()
        self.emitted_frames = stop
        # The next window starts at stop − ctx or later: drop what lies before it.
        drop = max(0, min(stop - ctx, self.phase_frame) - self.tail_start)
        self.mel_tail, self.f0_tail = self.mel_tail[:, drop:], self.f0_tail[drop:]
        self.tail_start += drop
        return chunk
