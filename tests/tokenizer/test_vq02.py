"""vq02 pieces against independent re-derivations: the online front end, the chunk-step encoder, strict loading,
and the exported ONNX chunk step (contract + parity with torch)."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from stepaudio.audio import energy_normalize, kaldi_fbank
from stepaudio.checkpoints import layout
from stepaudio.tokenizer.features import OnlineFrontend
from stepaudio.tokenizer.funasr_files import load_cmvn, load_paraformer_config
from stepaudio.tokenizer.sanm import CACHE_FRAMES, CHUNK_SAMPLES, OVERLAP_FRAMES
from stepaudio.tokenizer.vq02 import INPUT_NAMES, OUTPUT_NAMES, load_encoder_weights


@pytest.fixture(scope="module")
def paraformer(tokenizer_dir):
    folder = tokenizer_dir / layout.PARAFORMER_DIR
    config = load_paraformer_config(folder / layout.PARAFORMER_CONFIG)
    return folder, config, load_cmvn(folder / layout.PARAFORMER_CMVN)


def offline_features(wave, config, cmvn):
    """Whole-utterance fbank → FunASR offline LFR (left pad 3 copies, ceil(N/6) frames, right pad last) → CMVN."""
    fe = config.frontend
    fbank = kaldi_fbank(wave * 32768, 16000, num_mel_bins=fe.n_mels, window_type=fe.window, dither=fe.dither)
    padded = np.concatenate([np.repeat(fbank[:1], 3, axis=0), fbank])
    rows = []
    for i in range(math.ceil(len(fbank) / 6)):
        window = padded[6 * i : 6 * i + 7]
        window = np.concatenate([window, np.repeat(padded[-1:], 7 - len(window), axis=0)])
        rows.append(window.reshape(-1))
    return (np.stack(rows) + cmvn[0]) * cmvn[1]


def online_features(wave, config, cmvn):
    frontend = OnlineFrontend(config.frontend, *cmvn)
    full = len(wave) // CHUNK_SAMPLES * CHUNK_SAMPLES
    parts = [frontend.process(wave[i : i + CHUNK_SAMPLES], False) for i in range(0, full, CHUNK_SAMPLES)]
    if len(wave) > full:
        parts.append(frontend.process(wave[full:], True))
    return np.concatenate(parts)


def test_config_and_cmvn_come_from_the_funasr_files(paraformer):
    _, config, (shift, scale) = paraformer
    assert (config.frontend.n_mels, config.frontend.lfr_m, config.frontend.lfr_n) == (80, 7, 6)
    assert config.frontend.window == "hamming" and config.frontend.dither == 1.0  # FunASR default: key absent
    assert config.encoder.input_size == 560 and shift.shape == scale.shape == (560,)
    assert np.all(shift < 0) and np.all(scale > 0)


def test_online_front_end_equals_whole_utterance_lfr(paraformer, english):
    _, config, cmvn = paraformer
    wave = energy_normalize(english[0][: 5 * CHUNK_SAMPLES + 2000])  # the final chunk pads its last window
    online, offline = online_features(wave, config, cmvn), offline_features(wave, config, cmvn)
    assert online.shape == offline.shape
    np.testing.assert_allclose(online, offline, rtol=0, atol=2e-4)


def test_a_final_chunk_too_short_for_a_window_is_dropped_like_funasr(paraformer, english):
    _, config, cmvn = paraformer
    wave = energy_normalize(english[0][: 5 * CHUNK_SAMPLES + 500])  # 3 new frames + 1 cached < 7
    online, offline = online_features(wave, config, cmvn), offline_features(wave, config, cmvn)
    assert len(online) == len(offline) - 1 == 20
    np.testing.assert_allclose(online, offline[:20], rtol=0, atol=2e-4)


def reference_chunks(encoder, chunks):
    """FunASR forward_chunk with growing per-layer caches (no masks, no fixed slots), from the module's weights.

    chunk_size [0, 4, 5]: 5 overlap frames; encoder_chunk_look_back 4: keep the newest 4 × 4 = 16 cached frames.
    """
    d, overlap_frames, keep = encoder.cfg.output_size, 5, 16
    overlap, offset, caches, outputs = torch.zeros(1, overlap_frames, 560), 0, None, []
    half = torch.arange(280, dtype=torch.float32) * -(torch.log(torch.tensor([10000.0])) / 279)
    for feats in chunks:
        t = feats.shape[1]
        pos = torch.arange(offset + 1, offset + t + 1, dtype=torch.float32)[:, None] * torch.exp(half)[None]
        x = torch.cat([overlap, feats * d**0.5 + torch.cat([pos.sin(), pos.cos()], -1)[None]], 1)
        overlap, offset = x[:, -overlap_frames:], offset + t
        new_caches = []
        for i, layer in enumerate([*encoder.encoders0, *encoder.encoders]):
            att = layer.self_attn
            q, k, v = att.linear_q_k_v(layer.norm1(x)).chunk(3, -1)
            heads = [y.reshape(1, -1, att.heads, att.head_dim).transpose(1, 2) for y in (q, k, v)]
            keys = heads[1] if caches is None else torch.cat([caches[i][0], heads[1]], 2)
            values = heads[2] if caches is None else torch.cat([caches[i][1], heads[2]], 2)
            stride = (heads[1][:, :, :-overlap_frames], heads[2][:, :, :-overlap_frames])
            if caches is None:
                new_caches.append(stride)
            else:
                new_caches.append(tuple(torch.cat([c, s], 2)[:, :, -keep:] for c, s in zip(caches[i], stride)))
            weights = torch.softmax(heads[0] * att.head_dim**-0.5 @ keys.transpose(-1, -2), -1)
            context = (weights @ values).transpose(1, 2).reshape(1, -1, d)
            fsmn = att.fsmn_block(torch.nn.functional.pad(v.transpose(1, 2), (5, 5))).transpose(1, 2) + v
            y = att.linear_out(context) + fsmn
            x = x + y if layer.residual_attention else y
            x = x + layer.feed_forward(layer.norm2(x))
        caches = new_caches
        outputs.append(encoder.after_norm(x)[:, -t:])
    return torch.cat(outputs, 1)


@pytest.fixture(scope="module")
def encoder(paraformer):
    folder, config, _ = paraformer
    return load_encoder_weights(folder / layout.PARAFORMER_WEIGHTS, config)


CHUNK_FRAMES = [4, 4, 4, 4, 4, 4, 3]  # more than 4 chunks, so the 16-frame look-back window slides


def run_steps(step, chunks, state):
    outputs = []
    for feats in chunks:
        out, state = step(feats, state)
        outputs.append(out)
    return np.concatenate(outputs, 1), state


def torch_stepper(encoder):
    def step(feats, state):
        with torch.inference_mode():
            out, *new = encoder(feats, *(torch.from_numpy(s) for s in state))
        return out.numpy(), [s.numpy() for s in new]

    return step


def initial_state(encoder):
    return [s.numpy() for s in encoder.initial_state().values()]


def test_chunk_step_equals_funasr_forward_chunk(encoder):
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(1, t, 560, generator=gen) for t in CHUNK_FRAMES]
    with torch.inference_mode():
        expected = reference_chunks(encoder, chunks)
    got, state = run_steps(torch_stepper(encoder), chunks, initial_state(encoder))
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)
    assert int(state[0][0]) == sum(CHUNK_FRAMES) and int(state[3][0]) == CACHE_FRAMES


def test_model_pt_has_the_published_key_names_and_loads_strictly(paraformer, tmp_path):
    folder, config, _ = paraformer
    state = torch.load(folder / layout.PARAFORMER_WEIGHTS, weights_only=True)
    d = config.encoder.output_size
    assert state["encoder.encoders0.0.self_attn.linear_q_k_v.weight"].shape == (3 * d, 560)
    assert state["encoder.encoders0.0.norm1.weight"].shape == (560,)
    assert state["encoder.encoders.0.self_attn.linear_q_k_v.weight"].shape == (3 * d, d)
    assert state["encoder.encoders.0.self_attn.fsmn_block.weight"].shape == (d, 1, 11)
    assert state["encoder.encoders.0.feed_forward.w_1.weight"].shape == (config.encoder.linear_units, d)
    assert state["encoder.after_norm.weight"].shape == (d,)
    assert any(k.startswith("decoder.") for k in state)  # present in the file, ignored by the loader
    del state["encoder.encoders.0.norm2.bias"]
    broken = tmp_path / "model.pt"
    torch.save(state, broken)
    with pytest.raises(ValueError, match="norm2.bias"):
        load_encoder_weights(broken, config)


@pytest.fixture(scope="module")
def onnx_session(tokenizer_dir):
    return ort.InferenceSession(str(tokenizer_dir / layout.PARAFORMER_DIR / layout.VQ02_ENCODER_ONNX))


def test_onnx_chunk_step_contract(onnx_session, encoder):
    cfg = encoder.cfg
    inputs = {i.name: (i.type, i.shape) for i in onnx_session.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in onnx_session.get_outputs()}
    assert tuple(inputs) == INPUT_NAMES and tuple(outputs) == OUTPUT_NAMES
    kv = [cfg.num_blocks, 2, cfg.attention_heads, CACHE_FRAMES, cfg.head_dim]
    assert inputs["feats"][0] == "tensor(float)" and inputs["feats"][1][0] == 1 and inputs["feats"][1][2] == 560
    assert isinstance(inputs["feats"][1][1], str)  # dynamic number of new frames
    assert inputs["offset"] == ("tensor(int64)", [1]) and inputs["cache_valid"] == ("tensor(int64)", [1])
    assert inputs["overlap"] == ("tensor(float)", [1, OVERLAP_FRAMES, 560])
    assert inputs["kv_cache"] == ("tensor(float)", kv) and outputs["next_kv_cache"] == ("tensor(float)", kv)
    assert outputs["encoder_out"][0] == "tensor(float)" and outputs["encoder_out"][1][2] == cfg.output_size


def test_onnx_runtime_matches_torch_over_a_stream_of_chunks(onnx_session, encoder):
    gen = torch.Generator().manual_seed(1)
    chunks = [torch.randn(1, t, 560, generator=gen) for t in [*CHUNK_FRAMES, 1]]

    def onnx_step(feats, state):
        out, *new = onnx_session.run(list(OUTPUT_NAMES), {"feats": feats.numpy(), **dict(zip(INPUT_NAMES[1:], state))})
        return out, new

    expected, expected_state = run_steps(torch_stepper(encoder), chunks, initial_state(encoder))
    got, state = run_steps(onnx_step, chunks, initial_state(encoder))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    for a, b in zip(state, expected_state):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
