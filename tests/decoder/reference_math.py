"""The reference's batch-1 inference written the way CosyVoice writes it, for parity tests.

Reuses only the weights of the modules under test. Every composite step follows the reference code path instead of
the library's: the espnet ``rel_shift`` view trick, unmasked ``F.group_norm``, ``F.interpolate(mode="linear")`` per
part, the CFG loop, the sample-level source ``cumsum`` (in float64 here, the exact value the frame-wise sum
approximates), ``torch.stft``/``torch.istft``, ``nn.ReflectionPad1d`` and ``nn.Upsample``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _conv_weight(conv) -> torch.Tensor:
    """Weight of a weight-norm conv as the old API computes it: g · v / ‖v‖ (norm over all dims but 0)."""
    v, g = conv.weight_v, conv.weight_g
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))
    return g * v / norm


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    zero_pad = torch.zeros((*x.shape[:3], 1), dtype=x.dtype)
    padded = torch.cat([zero_pad, x], dim=-1).view(x.shape[0], x.shape[1], x.shape[3] + 1, x.shape[2])
    return padded[:, :, 1:].view_as(x)[:, :, :, : x.shape[-1] // 2 + 1]


def espnet_pe_table(d_model: int, max_len: int = 5000) -> torch.Tensor:
    pos = torch.zeros(max_len, d_model)
    neg = torch.zeros(max_len, d_model)
    position = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pos[:, 0::2] = torch.sin(position * div)
    pos[:, 1::2] = torch.cos(position * div)
    neg[:, 0::2] = torch.sin(-1 * position * div)
    neg[:, 1::2] = torch.cos(-1 * position * div)
    return torch.cat([torch.flip(pos, [0]).unsqueeze(0), neg[1:].unsqueeze(0)], dim=1)


def encoder(enc, x: torch.Tensor) -> torch.Tensor:
    x = enc.embed.out(x) * math.sqrt(enc.config.output_size)
    table = espnet_pe_table(enc.config.output_size)
    length = x.shape[1]
    pos_emb = table[:, table.shape[1] // 2 - length + 1 : table.shape[1] // 2 + length]
    for layer in enc.encoders:
        att = layer.self_attn
        y = layer.norm_mha(x)
        q = att.linear_q(y).view(1, -1, att.h, att.d_k)
        k = att.linear_k(y).view(1, -1, att.h, att.d_k).transpose(1, 2)
        v = att.linear_v(y).view(1, -1, att.h, att.d_k).transpose(1, 2)
        p = att.linear_pos(pos_emb).view(1, -1, att.h, att.d_k).transpose(1, 2)
        ac = torch.matmul((q + att.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = rel_shift(torch.matmul((q + att.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        attn = torch.softmax((ac + bd) / math.sqrt(att.d_k), dim=-1)
        y = att.linear_out(torch.matmul(attn, v).transpose(1, 2).reshape(1, -1, att.h * att.d_k))
        x = x + y
        x = x + layer.feed_forward.w_2(F.silu(layer.feed_forward.w_1(layer.norm_ff(x))))
    return enc.after_norm(x)


def _block1d(block, x, mask):
    conv, norm = block.block[0], block.block[1]
    h = F.group_norm(conv(x * mask), norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.mish(h) * mask


def _resnet(res, x, mask, t):
    h = _block1d(res.block1, x, mask) + res.mlp(t).unsqueeze(-1)
    h = _block1d(res.block2, h, mask)
    return h + res.res_conv(x * mask)


def _transformer(blocks, x):
    h = x.transpose(1, 2)
    for blk in blocks:
        att = blk.attn1
        y = blk.norm1(h)
        q, k, v = (
            lin(y).view(y.shape[0], -1, att.heads, lin.out_features // att.heads).transpose(1, 2)
            for lin in (att.to_q, att.to_k, att.to_v)
        )
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        h = h + att.to_out[0]((w @ v).transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))
        h = h + blk.ff.net[2](F.gelu(blk.ff.net[0].proj(blk.norm3(h))))
    return h.transpose(1, 2)


def estimator(est, x, mask, mu, t, spks, cond):
    half = est.time_embeddings.dim // 2
    freqs = torch.exp(torch.arange(half).float() * -(math.log(10000) / (half - 1)))
    emb = 1000 * t.unsqueeze(1) * freqs.unsqueeze(0)
    t = est.time_mlp(torch.cat((emb.sin(), emb.cos()), dim=-1))
    x = torch.cat([x, mu, spks.unsqueeze(-1).repeat(1, 1, x.shape[-1]), cond], dim=1)
    hiddens, masks = [], [mask]
    for resnet, blocks, down in est.down_blocks:
        m = masks[-1]
        x = _transformer(blocks, _resnet(resnet, x, m, t))
        hiddens.append(x)
        x = down(x * m)
        masks.append(m[:, :, ::2])
    masks = masks[:-1]
    for resnet, blocks in est.mid_blocks:
        x = _transformer(blocks, _resnet(resnet, x, masks[-1], t))
    for resnet, blocks, up in est.up_blocks:
        m = masks.pop()
        skip = hiddens.pop()
        x = torch.cat([x[:, :, : skip.shape[-1]], skip], dim=1)
        x = up(_transformer(blocks, _resnet(resnet, x, m, t)) * m)
    x = _block1d(est.final_block, x, m)
    return est.final_proj(x * m) * mask


def flow_inference(flow, token, prompt_token, prompt_feat, embedding, noise):
    """MaskedDiffWithXvec.inference for one utterance (tensors with batch 1, as the reference takes them)."""
    cfg = flow.config
    spk = flow.spk_embed_affine_layer(F.normalize(embedding, dim=1))
    n1, n2 = prompt_token.shape[1], token.shape[1]
    h = encoder(flow.encoder, flow.input_embedding(torch.cat([prompt_token, token], dim=1)))
    h = flow.encoder_proj(h)
    mel1 = prompt_feat.shape[1]
    mel2 = int(n2 / cfg.input_frame_rate * cfg.mel_sampling_rate / cfg.mel_hop_size)
    x2 = F.interpolate(h[:, n1:].transpose(1, 2), size=mel2, mode="linear")
    if n1:
        x = torch.cat([F.interpolate(h[:, :n1].transpose(1, 2), size=mel1, mode="linear"), x2], dim=2)
    else:
        x = x2
    layers = list(flow.length_regulator.model)
    for i in range(0, len(layers) - 1, 3):
        norm = layers[i + 1]
        x = F.mish(F.group_norm(layers[i](x), norm.num_groups, norm.weight, norm.bias, norm.eps))
    mu = layers[-1](x)
    cond = torch.zeros(1, mel1 + mel2, cfg.output_size)
    cond[:, :mel1] = prompt_feat
    cond = cond.transpose(1, 2)
    mask = torch.ones(1, 1, mel1 + mel2)
    t_span = 1 - torch.cos(torch.linspace(0, 1, cfg.cfm.n_timesteps + 1) * 0.5 * torch.pi)
    x, t, dt = noise, t_span[0].unsqueeze(0), t_span[1] - t_span[0]
    rate = cfg.cfm.inference_cfg_rate
    for step in range(1, len(t_span)):
        v = estimator(
            flow.decoder.estimator,
            torch.cat([x, x]),
            torch.cat([mask, mask]),
            torch.cat([mu, torch.zeros_like(mu)]),
            torch.cat([t, t]),
            torch.cat([spk, torch.zeros_like(spk)]),
            torch.cat([cond, torch.zeros_like(cond)]),
        )
        x = x + dt * ((1.0 + rate) * v[:1] - rate * v[1:])
        t = t + dt
        if step < len(t_span) - 1:
            dt = t_span[step + 1] - t
    return x[:, :, mel1:]


def _resblock(rb, x):
    for c1, c2, a1, a2 in zip(rb.convs1, rb.convs2, rb.activations1, rb.activations2):
        def snake(y, act):
            alpha = act.alpha.view(1, -1, 1)
            return y + (1.0 / (alpha + 1e-9)) * torch.sin(y * alpha) ** 2

        xt = F.conv1d(snake(x, a1), _conv_weight(c1), c1.bias, 1, c1.padding, c1.dilation)
        xt = F.conv1d(snake(xt, a2), _conv_weight(c2), c2.bias, 1, c2.padding, c2.dilation)
        x = xt + x
    return x


def hift_inference(hift, mel, phase_vec, noise):
    """HiFTGenerator.inference for mel (1, 80, T); phase_vec (1, 9, 1), noise (1, 9, 256·T) replace the draws."""
    c = hift.config
    x = mel
    for i in range(0, len(hift.f0_predictor.condnet), 2):
        conv = hift.f0_predictor.condnet[i]
        x = F.elu(F.conv1d(x, _conv_weight(conv), conv.bias, padding=1))
    f0 = torch.abs(hift.f0_predictor.classifier(x.transpose(1, 2)).squeeze(-1))
    f0_up = torch.nn.Upsample(scale_factor=c.samples_per_frame)(f0[:, None]).transpose(1, 2)  # (1, L, 1)
    f0_up = f0_up.transpose(1, 2).double()
    f_mat = torch.cat([f0_up * (i + 1) / c.sampling_rate for i in range(c.n_harmonic_channels)], dim=1)
    theta = 2 * math.pi * (torch.cumsum(f_mat, dim=-1) % 1)
    sines = c.nsf_alpha * torch.sin(theta + phase_vec.double())
    uv = (f0_up > c.nsf_voiced_threshold).double()
    noise_amp = uv * c.nsf_sigma + (1 - uv) * c.nsf_alpha / 3
    sines = (sines * uv + noise_amp * noise.double()).float()
    source = torch.tanh(hift.m_source.l_linear(sines.transpose(1, 2))).transpose(1, 2)
    window = torch.hann_window(c.n_fft, periodic=True)
    spec = torch.view_as_real(torch.stft(source.squeeze(1), c.n_fft, c.hop_len, c.n_fft, window=window, return_complex=True))
    s_stft = torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    x = F.conv1d(mel, _conv_weight(hift.conv_pre), hift.conv_pre.bias, padding=3)
    n_kernels = len(c.resblock_kernel_sizes)
    for i, up in enumerate(hift.ups):
        x = F.leaky_relu(x, c.lrelu_slope)
        x = F.conv_transpose1d(x, _conv_weight(up), up.bias, up.stride, up.padding)
        if i == len(hift.ups) - 1:
            x = torch.nn.ReflectionPad1d((1, 0))(x)
        si = _resblock(hift.source_resblocks[i], hift.source_downs[i](s_stft))
        x = x + si
        x = sum(_resblock(hift.resblocks[i * n_kernels + j], x) for j in range(n_kernels)) / n_kernels
    x = F.leaky_relu(x)
    x = F.conv1d(x, _conv_weight(hift.conv_post), hift.conv_post.bias, padding=3)
    half = c.n_fft // 2 + 1
    magnitude = torch.clip(torch.exp(x[:, :half]), max=1e2)
    phase = torch.sin(x[:, half:])
    spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    wave = torch.istft(spectrum, c.n_fft, c.hop_len, c.n_fft, window=window)
    return torch.clamp(wave, -c.audio_limit, c.audio_limit)
