"""Flow decoder (CosyVoice ``MaskedDiffWithXvec``): tokens + prompt mel + speaker embedding + noise → mel.

One ``forward`` serves the library and the ONNX export: it takes padded batches with explicit lengths and runs the
reference's inference math per row —
1. speaker: L2-normalise the 192-d CAM++ vector, ``spk_embed_affine_layer`` → 80;
2. tokens: [prompt tokens ; target tokens] of each row, ``input_embedding``, Conformer encoder, ``encoder_proj``;
3. lengths: prompt part → prompt mel frames, target part → ``int(n / input_frame_rate · sr / hop)`` frames, each
   linearly interpolated on its own (``F.interpolate(mode="linear")`` indices and weights), then the regulator convs;
4. cond = prompt mel in the first frames; 10 Euler steps on the cosine t-grid with classifier-free guidance
   (v = 1.7·v(x, mu, spk, cond) − 0.7·v(x, 0, 0, 0)); the target frames are returned.
The reference runs batch 1 without masks; here every step that mixes frames (attention, GroupNorm, convolutions) is
masked so each row of a padded batch gets exactly what it gets alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stepaudio.decoder.config import CFMConfig, EstimatorConfig, FlowConfig, LengthRegulatorConfig
from stepaudio.decoder.encoder import ConformerEncoder
from stepaudio.decoder.estimator import ConditionalDecoder, masked_group_norm


class InterpolateRegulator(nn.Module):
    """``model`` = [Conv1d(k3) → GroupNorm → Mish] × len(sampling_ratios) → Conv1d(k1), as the reference Sequential."""

    def __init__(self, config: LengthRegulatorConfig):
        super().__init__()
        ch = config.channels
        layers: list[nn.Module] = []
        for _ in config.sampling_ratios:
            layers += [nn.Conv1d(ch, ch, 3, 1, 1), nn.GroupNorm(config.groups, ch), nn.Mish()]
        layers.append(nn.Conv1d(ch, config.out_channels or ch, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, T) already interpolated and zero past each row's length; mask (B, 1, T)."""
        layers = list(self.model)
        for i in range(0, len(layers) - 1, 3):
            conv, norm, activation = layers[i : i + 3]
            x = activation(masked_group_norm(conv(x), mask, norm)) * mask
        return layers[-1](x)


class ConditionalCFM(nn.Module):
    """Euler solver of the conditional flow; ``estimator`` is the U-Net (key prefix ``decoder.estimator``)."""

    def __init__(self, cfm: CFMConfig, estimator: EstimatorConfig):
        super().__init__()
        self.cfm = cfm
        self.estimator = ConditionalDecoder(estimator)

    def time_steps(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(t, dt) of each Euler step. The reference builds the cosine grid in the flow's dtype (bf16 on GPU) and
        accumulates t step by step; the same arithmetic here gives the same values."""
        steps = self.cfm.n_timesteps
        t_span = torch.linspace(0, 1, steps + 1, device=device, dtype=dtype)
        t_span = 1 - torch.cos(t_span * 0.5 * math.pi)
        t, dt = t_span[0], t_span[1] - t_span[0]
        schedule = []
        for step in range(1, steps + 1):
            schedule.append((t, dt))
            t = t + dt
            if step < steps:
                dt = t_span[step + 1] - t
        return schedule

    def step(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        dt: torch.Tensor,
    ) -> torch.Tensor:
        """One Euler step with classifier-free guidance: v = (1+r)·v(x, mu, spk, cond) − r·v(x, 0, 0, 0)."""
        batch = x.shape[0]
        rate = self.cfm.inference_cfg_rate
        velocity = self.estimator(
            torch.cat([x, x], dim=0),
            torch.cat([mask, mask], dim=0),
            torch.cat([mu, torch.zeros_like(mu)], dim=0),
            t.expand(2 * batch),
            torch.cat([spks, torch.zeros_like(spks)], dim=0),
            torch.cat([cond, torch.zeros_like(cond)], dim=0),
        )
        return x + dt * ((1.0 + rate) * velocity[:batch] - rate * velocity[batch:])

    def forward(
        self, noise: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        x = noise
        for t, dt in self.time_steps(mu.dtype, mu.device):
            x = self.step(x, mask, mu, spks, cond, t, dt)
        return x


class MaskedDiffWithXvec(nn.Module):
    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = ConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(self.encoder.output_size(), config.output_size)
        self.length_regulator = InterpolateRegulator(config.length_regulator)
        self.decoder = ConditionalCFM(config.cfm, config.estimator)
        ratio = config.mel_frames_ratio()
        self._frames_num, self._frames_den = ratio.numerator, ratio.denominator

    def mel_frames(self, token_lens: torch.Tensor) -> torch.Tensor:
        """Target mel frames per row, in exact integer arithmetic (equal to the reference's float formula)."""
        return torch.div(token_lens * self._frames_num, self._frames_den, rounding_mode="floor")

    def forward(
        self,
        tokens: torch.Tensor,
        token_lens: torch.Tensor,
        prompt_tokens: torch.Tensor,
        prompt_token_lens: torch.Tensor,
        prompt_mel: torch.Tensor,
        prompt_mel_lens: torch.Tensor,
        speaker_embedding: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch → (mel (B, 80, noise_T − prompt_T) float32, mel_lens (B,) int64).

        tokens (B, N) / prompt_tokens (B, P) int64 ids 0…vocab−1; prompt_mel (B, P_mel, 80); speaker_embedding
        (B, 192); noise (B, 80, P_mel + mel_frames(N)); the ``*_lens`` (B,) int64 give each row's real length.
        """
        mask, mu, spks, cond, mp_len, mt_len = self.prepare(
            tokens, token_lens, prompt_tokens, prompt_token_lens, prompt_mel, prompt_mel_lens, speaker_embedding, noise
        )
        x = self.decoder(noise.to(mu.dtype), mask, mu, spks, cond)
        return self.select_target(x, prompt_mel, mp_len, mt_len), mt_len

    def prepare(
        self,
        tokens: torch.Tensor,
        token_lens: torch.Tensor,
        prompt_tokens: torch.Tensor,
        prompt_token_lens: torch.Tensor,
        prompt_mel: torch.Tensor,
        prompt_mel_lens: torch.Tensor,
        speaker_embedding: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Everything before the ODE: (mask, mu, spks, cond) for the solver and each row's prompt/target frames.

        ``noise`` is read for its length only; it is the solver's starting point.
        """
        dtype = self.spk_embed_affine_layer.weight.dtype
        device = tokens.device
        spks = self.spk_embed_affine_layer(F.normalize(speaker_embedding.to(dtype), dim=1))

        # [prompt ; target] tokens of each row, gathered from the two padded inputs.
        all_tokens = torch.cat([prompt_tokens, tokens], dim=1)
        n_all = all_tokens.shape[1]
        positions = torch.arange(n_all, device=device).unsqueeze(0)
        p_len = prompt_token_lens.unsqueeze(1)
        t_len = token_lens.unsqueeze(1)
        source = torch.where(positions < p_len, positions, positions - p_len + prompt_tokens.shape[1])
        token_valid = positions < p_len + t_len
        ids = torch.where(token_valid, torch.gather(all_tokens, 1, source.clamp(0, n_all - 1)), 0)
        h = self.encoder(self.input_embedding(ids), token_valid)
        h = self.encoder_proj(h)  # (B, P+N, 80)

        # Length regulation: prompt and target parts interpolated separately (F.interpolate linear semantics).
        n_mel = noise.shape[2]
        frames = torch.arange(n_mel, device=device).unsqueeze(0)
        mp_len = prompt_mel_lens.unsqueeze(1)
        mt_len = self.mel_frames(token_lens).unsqueeze(1)
        in_prompt = frames < mp_len
        local = torch.where(in_prompt, frames, frames - mp_len)
        in_len = torch.where(in_prompt, p_len, t_len)
        out_len = torch.where(in_prompt, mp_len, mt_len)
        base = torch.where(in_prompt, torch.zeros_like(p_len), p_len)
        scale = in_len.to(torch.float32) / out_len.clamp(min=1).to(torch.float32)
        src = ((local.to(torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
        i0 = torch.minimum(src.floor().to(torch.int64), (in_len - 1).clamp(min=0))
        lam1 = (src - i0.to(torch.float32)).clamp(0, 1).unsqueeze(-1).to(dtype)
        i1 = torch.where(i0 < in_len - 1, i0 + 1, i0)
        width = h.shape[-1]

        def pick(index: torch.Tensor) -> torch.Tensor:
            return torch.gather(h, 1, (base + index).clamp(0, n_all - 1).unsqueeze(-1).expand(-1, -1, width))

        mask = (frames < mp_len + mt_len).unsqueeze(1).to(dtype)  # (B, 1, M)
        mu = ((1 - lam1) * pick(i0) + lam1 * pick(i1)).transpose(1, 2) * mask
        mu = self.length_regulator(mu, mask)

        cond = F.pad(prompt_mel.to(dtype), (0, 0, 0, n_mel - prompt_mel.shape[1])).transpose(1, 2)
        cond = cond * (frames < mp_len).unsqueeze(1).to(dtype)
        return mask, mu, spks, cond, mp_len.squeeze(1), mt_len.squeeze(1)

    @staticmethod
    def select_target(
        x: torch.Tensor, prompt_mel: torch.Tensor, mp_len: torch.Tensor, mt_len: torch.Tensor
    ) -> torch.Tensor:
        """Each row's target frames (they start after its own prompt frames) → (B, 80, M − P_mel) float32."""
        n_mel = x.shape[2]
        out_frames = torch.arange(n_mel - prompt_mel.shape[1], device=x.device).unsqueeze(0)
        take = (mp_len.unsqueeze(1) + out_frames).clamp(max=n_mel - 1).unsqueeze(1).expand(-1, x.shape[1], -1)
        mel = torch.gather(x, 2, take) * (out_frames < mt_len.unsqueeze(1)).unsqueeze(1).to(x.dtype)
        return mel.to(torch.float32)
