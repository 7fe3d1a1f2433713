"""HiFT vocoder (CosyVoice ``HiFTGenerator``): mel (80 × T) → 22.05 kHz wave (256·T samples).

Same math as the reference: ConvRNNF0Predictor → f0, harmonic sine source (9 harmonics, voiced if f0 > 10 Hz),
source STFT (n_fft 16, hop 4, periodic Hann, centred), conv_pre → 2 × [LeakyReLU, ConvTranspose, + source branch,
mean of Snake ResBlocks] → conv_post → magnitude exp(·) ≤ 100 and phase sin(·) → iSTFT → clamp ±0.99.

Differences in form, not in math (each exact up to float rounding):
- weight norm: parameters ``weight_g``/``weight_v`` as the old ``torch.nn.utils.weight_norm`` stores them, and the
  weight computed with the same ``torch._weight_norm(v, g, 0)``; ``hift.pt`` loads strictly.
- STFT and iSTFT as convolutions with the DFT basis × window (iSTFT divides by the overlap-added squared window), so
  the graph exports to ONNX.
- randomness is an input: ``source_phase`` (B, 9) replaces the reference's Uniform(−π, π) draw (the fundamental's
  phase is forced to 0 as there) and ``source_noise`` (B, 9, 256·T) the reference's ``randn_like``.
- the sine phase cumulative sum runs per frame: within a frame f0 is constant (nearest upsampling), so phase at
  sample j of frame t is frac(Σ_{s<t} frac(256·f_s) + (j+1)·f_t) — the reference's cumsum over all samples in exact
  arithmetic, but without its float32 drift over 10⁵+ samples.
- lengths are inputs: every convolution's output is zeroed past each row's length, the source STFT reflects at each
  row's own end and the iSTFT window envelope counts each row's own frames, so padded batches are exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.decoder.config import HiFTConfig
from stepaudio.decoder.masks import masked, no_padding


class _WeightNorm:
    """Replaces a conv's ``weight`` by the old weight-norm API's ``weight_g`` and ``weight_v`` (the checkpoint's
    key names): weight = weight_g · weight_v / ‖weight_v‖, the norm over all dims but 0."""

    def _split_weight(self) -> None:
        weight = self.weight.detach()
        del self.weight
        self.weight_g = nn.Parameter(torch.norm_except_dim(weight, 2, 0))
        self.weight_v = nn.Parameter(weight.clone())

    def normed_weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)


class WeightNormConv1d(_WeightNorm, nn.Conv1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normed_weight(), self.bias)


class WeightNormConvTranspose1d(_WeightNorm, nn.ConvTranspose1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.normed_weight(), self.bias, self.stride, self.padding, 0, self.groups,
                                  self.dilation)


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.view(1, -1, 1)
        # s·s rather than s.pow(2): the same correctly rounded square (torch and ONNX Runtime both special-case
        # exponent 2 as a product), but the exported graph gets a plain Mul instead of a Pow kernel.
        s = torch.sin(x * alpha)
        return x + (1.0 / (alpha + 1e-9)) * (s * s)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, 1, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, 1, dilation=1, padding=(kernel_size - 1) // 2)
            for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask=None``: no padding (stepaudio/decoder/masks.py)."""
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            xt = masked(conv1(act1(x)), mask)
            x = masked(conv2(act2(xt)), mask) + x
        return x


class ConvRNNF0Predictor(nn.Module):
    def __init__(self, num_class: int, in_channels: int, cond_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [WeightNormConv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """mel (B, 80, T), mask (B, 1, T) or None (no padding) → f0 (B, T) ≥ 0."""
        for i in range(0, len(self.condnet), 2):
            conv, activation = self.condnet[i], self.condnet[i + 1]
            x = masked(activation(conv(x)), mask)
        return torch.abs(self.classifier(x.transpose(1, 2)).squeeze(-1))


class SourceModuleHnNSF(nn.Module):
    """Only the merge layer carries weights (``l_linear``); the sine generator is a function of f0 and the inputs."""

    def __init__(self, harmonics: int):
        super().__init__()
        self.l_linear = nn.Linear(harmonics, 1)


def stft_basis(n_fft: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """STFT analysis kernels (window·cos | −window·sin), iSTFT synthesis kernels (inverse DFT × window) and the
    periodic Hann window; built in float64, returned as float32."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    angle = 2 * np.pi * np.outer(k, n) / n_fft
    analysis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window  # (n_fft + 2, n_fft)
    # irfft of a one-sided spectrum: DC and Nyquist once, the rest twice; imaginary parts enter with −sin.
    weight = np.full(k.shape, 2.0)
    weight[0] = weight[-1] = 1.0
    synthesis = np.concatenate([weight[:, None] * np.cos(angle), -weight[:, None] * np.sin(angle)]) / n_fft
    synthesis = synthesis * window
    return (
        torch.from_numpy(analysis.astype(np.float32)).unsqueeze(1),
        torch.from_numpy(synthesis.astype(np.float32)).unsqueeze(1),
        torch.from_numpy(window.astype(np.float32)),
    )


def harmonic_increments(f0: torch.Tensor, config: HiFTConfig) -> torch.Tensor:
    """Per-sample phase increment (cycles) of each harmonic: f0·(k+1)/sr, (B, 9, T)."""
    harmonics = torch.arange(1, config.n_harmonic_channels + 1, device=f0.device, dtype=f0.dtype)
    return f0.unsqueeze(1) * harmonics.view(1, -1, 1) / config.sampling_rate


def frame_phase_advance(f0: torch.Tensor, config: HiFTConfig) -> torch.Tensor:
    """Phase (cycles, mod 1) each frame adds: frac(samples_per_frame · increment), (B, 9, T)."""
    advance = harmonic_increments(f0, config) * config.samples_per_frame
    return advance - torch.floor(advance)


def phase_cycles(f0: np.ndarray, config: HiFTConfig, start_cycles: np.ndarray | float = 0.0) -> np.ndarray:
    """Cycles (9,) float64 in [0, 1) each harmonic has advanced after the frames of ``f0`` (T,) Hz, starting from
    ``start_cycles``: a stream sums its frames once, chunk by chunk, instead of from frame 0 at every call."""
    advance = frame_phase_advance(torch.from_numpy(np.asarray(f0, np.float32))[None], config)[0]
    return np.mod(advance.double().sum(-1).numpy() + start_cycles, 1.0)


def carried_phase(start_phase: np.ndarray, f0: np.ndarray, config: HiFTConfig) -> np.ndarray:
    """Source phases (9,) radians at the frame after ``f0`` (T,) Hz when the source started at ``start_phase``:
    what a vocoder call that begins there needs to continue an earlier call's sine source (streaming)."""
    return phase_at(start_phase, phase_cycles(f0, config))


def phase_at(start_phase: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Radians (9,) float32 after ``cycles`` (9,) from ``start_phase``."""
    return (np.asarray(start_phase, np.float32) + 2 * np.pi * cycles).astype(np.float32)


class HiFTGenerator(nn.Module):
    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.config = config
        c = config
        self.m_source = SourceModuleHnNSF(c.n_harmonic_channels)
        self.conv_pre = WeightNormConv1d(c.in_channels, c.base_channels, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            WeightNormConvTranspose1d(
                c.base_channels // (2**i), c.base_channels // (2 ** (i + 1)), k, u, padding=(k - u) // 2
            )
            for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes))
        )
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        down_rates = np.cumprod([1] + list(c.upsample_rates[::-1][:-1]))[::-1]
        for i, (u, k, d) in enumerate(zip(down_rates, c.source_resblock_kernel_sizes, c.source_resblock_dilation_sizes)):
            ch = c.base_channels // (2 ** (i + 1))
            u = int(u)
            if u == 1:
                self.source_downs.append(nn.Conv1d(c.n_fft + 2, ch, 1, 1))
            else:
                self.source_downs.append(nn.Conv1d(c.n_fft + 2, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, tuple(d)))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = c.base_channels // (2 ** (i + 1))
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(ch, k, tuple(d)))
        self.conv_post = WeightNormConv1d(ch, c.n_fft + 2, 7, 1, padding=3)
        self.f0_predictor = ConvRNNF0Predictor(c.f0_num_class, c.f0_in_channels, c.f0_cond_channels)
        analysis, synthesis, window = stft_basis(c.n_fft)
        self.register_buffer("stft_analysis", analysis, persistent=False)
        self.register_buffer("istft_synthesis", synthesis, persistent=False)
        self.register_buffer("window_squared", (window**2).view(1, 1, -1), persistent=False)
        fundamental_free = torch.ones(c.n_harmonic_channels)
        fundamental_free[0] = 0
        self.register_buffer("phase_mask", fundamental_free.view(1, -1, 1, 1), persistent=False)

    # -- source ---------------------------------------------------------------------------------------------
    def source(self, f0: torch.Tensor, phase: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f0 (B, T), phase (B, 9) radians, noise (B, 9, 256·T) → merged harmonic source (B, 1, 256·T)."""
        c = self.config
        hop = c.samples_per_frame
        batch, frames = f0.shape
        increment = harmonic_increments(f0, c)  # (B, 9, T)
        advance = frame_phase_advance(f0, c)
        start = torch.cumsum(advance, dim=-1) - advance
        start = start - torch.floor(start)
        steps = torch.arange(1, hop + 1, device=f0.device, dtype=f0.dtype).view(1, 1, 1, hop)
        cycles = start.unsqueeze(-1) + increment.unsqueeze(-1) * steps  # (B, 9, T, hop)
        cycles = cycles - torch.floor(cycles)
        phase = phase.view(batch, -1, 1, 1) * self.phase_mask
        sines = c.nsf_alpha * torch.sin(2 * math.pi * cycles + phase)
        voiced = (f0 > c.nsf_voiced_threshold).to(f0.dtype).view(batch, 1, frames, 1)
        noise = noise.view(batch, c.n_harmonic_channels, frames, hop)
        noise_amp = voiced * c.nsf_sigma + (1 - voiced) * c.nsf_alpha / 3
        sines = sines * voiced + noise_amp * noise
        sines = sines.reshape(batch, c.n_harmonic_channels, frames * hop).transpose(1, 2)
        return torch.tanh(self.m_source.l_linear(sines)).transpose(1, 2)

    # -- spectral transforms ---------------------------------------------------------------------------------
    def source_stft(self, source: torch.Tensor, sample_lens: torch.Tensor) -> torch.Tensor:
        """Centred STFT with reflect padding at each row's own ends → (B, n_fft+2, samples/hop + 1)."""
        pad = self.config.n_fft // 2
        total = source.shape[-1]
        positions = torch.arange(total + 2 * pad, device=source.device).unsqueeze(0) - pad
        last = sample_lens.unsqueeze(1) - 1
        index = positions.abs()
        index = torch.where(index > last, 2 * last - index, index).clamp(0, total - 1)
        padded = torch.gather(source.squeeze(1), 1, index).unsqueeze(1)
        return F.conv1d(padded, self.stft_analysis, stride=self.config.hop_len)

    def istft(self, spectrum: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """(B, n_fft+2, F) real|imag, frame_mask (B, 1, F) → (B, hop·(F−1)) like torch.istft(center=True)."""
        hop, pad = self.config.hop_len, self.config.n_fft // 2
        frames = spectrum.shape[-1]
        summed = F.conv_transpose1d(spectrum * frame_mask, self.istft_synthesis, stride=hop)
        envelope = F.conv_transpose1d(frame_mask, self.window_squared, stride=hop)
        wave = torch.where(envelope > 1e-11, summed / envelope.clamp(min=1e-11), torch.zeros_like(summed))
        return wave[:, 0, pad : pad + hop * (frames - 1)]

    # -- generator -------------------------------------------------------------------------------------------
    def forward(
        self, mel: torch.Tensor, mel_lens: torch.Tensor, source_phase: torch.Tensor, source_noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mel (B, 80, T) + lengths (B,) + source randomness → (wave (B, 256·T), wave_lens (B,), f0 (B, T) Hz).

        f0 (zero past ``mel_lens``) is what a streaming caller needs to carry the source phase into its next call."""
        c = self.config
        frames = mel.shape[-1]
        steps = torch.arange(frames, device=mel.device).unsqueeze(0)

        def mask_at(scale: int, extra: int = 0) -> torch.Tensor:
            positions = torch.arange(frames * scale + extra, device=mel.device).unsqueeze(0)
            return (positions < mel_lens.unsqueeze(1) * scale + extra).unsqueeze(1).to(mel.dtype)

        mel_mask = (steps < mel_lens.unsqueeze(1)).unsqueeze(1).to(mel.dtype)
        dense = no_padding(mel_mask)  # then every mask below is all ones and the generator skips them

        def mask_or_none(scale: int, extra: int = 0) -> torch.Tensor | None:
            return None if dense else mask_at(scale, extra)

        frame_mask = None if dense else mel_mask
        mel = masked(mel, frame_mask)
        f0 = self.f0_predictor(mel, frame_mask)
        source = self.source(f0, source_phase, source_noise)
        sample_lens = mel_lens * c.samples_per_frame
        spec_mask = mask_at(c.samples_per_frame // c.hop_len, 1)
        source_spec = self.source_stft(source, sample_lens) * spec_mask

        x = masked(self.conv_pre(mel), frame_mask)
        scale = 1
        n_kernels = len(c.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            scale *= c.upsample_rates[i]
            x = up(F.leaky_relu(x, c.lrelu_slope))
            last = i == len(self.ups) - 1
            if last:
                x = F.pad(x, (1, 0), mode="reflect")
            mask = mask_or_none(scale, 1 if last else 0)
            x = masked(x, mask)
            si = masked(self.source_downs[i](source_spec), mask)
            x = x + self.source_resblocks[i](si, mask)
            x = sum(self.resblocks[i * n_kernels + j](x, mask) for j in range(n_kernels)) / n_kernels
        x = self.conv_post(F.leaky_relu(x))
        half = c.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :half]).clamp(max=1e2)
        phase = torch.sin(x[:, half:])
        spectrum = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        wave = self.istft(spectrum, spec_mask)
        wave = wave.clamp(-c.audio_limit, c.audio_limit) * mask_at(c.samples_per_frame)[:, 0]
        return wave, sample_lens, f0 * mel_mask[:, 0]
