"""CAM++ speaker embedding and the tokenizer checkpoint writer's real layout and ONNX interfaces."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from stepaudio.audio import resample
from stepaudio.checkpoints import layout
from stepaudio.tokenizer import SpeakerEncoder
from stepaudio.tokenizer.campplus import speaker_features


@pytest.fixture(scope="module")
def campplus_path(checkpoint_root):
    return checkpoint_root / layout.TTS_DIR / layout.SPEECH_DECODER_DIR / layout.CAMPPLUS_ONNX


@pytest.fixture(scope="module")
def speaker(campplus_path):
    return SpeakerEncoder.from_onnx(campplus_path)


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_embedding_is_192_floats_and_gain_invariant(speaker, english):
    wave, rate = english
    wave = wave + 0.01 * np.random.default_rng(1).standard_normal(len(wave)).astype(np.float32)  # no all-zero frames
    embedding = speaker.embed(wave, rate)
    assert embedding.shape == (192,) and embedding.dtype == np.float32 and np.all(np.isfinite(embedding))
    # a gain adds the same log offset to every fbank bin (louder, so nothing new hits the log floor), which the
    # per-utterance mean subtraction removes
    np.testing.assert_allclose(speaker.embed(wave * 2.0, rate), embedding, rtol=0, atol=1e-4)
    other = speaker.embed(np.random.default_rng(0).standard_normal(rate * 2).astype(np.float32) * 0.1, rate)
    assert cosine(other, embedding) < 0.999


def test_other_rates_are_resampled_to_16k_first(speaker, english):
    wave, rate = english
    at_48k = np.stack([resample(wave, rate, 48000)] * 2)
    assert cosine(speaker.embed(at_48k, 48000), speaker.embed(wave, rate)) > 0.99


def test_features_are_mean_normalised_fbank(english):
    feats = speaker_features(english[0])
    assert feats.shape == (1 + (len(english[0]) - 400) // 160, 80)
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-4)


def test_bad_or_too_short_audio_is_rejected(speaker):
    with pytest.raises(ValueError, match="too short"):
        speaker.embed(np.zeros(100, np.float32), 16000)
    with pytest.raises(ValueError, match="NaN"):
        speaker.embed(np.array([np.nan] * 1000, np.float32), 16000)


def test_writer_uses_the_published_layout(checkpoint_root):
    tok = checkpoint_root / layout.TOKENIZER_DIR
    paraformer = tok / layout.PARAFORMER_DIR
    for path in (
        tok / layout.LINGUISTIC_CODEBOOK,
        tok / layout.SEMANTIC_TOKENIZER_ONNX,
        paraformer / layout.PARAFORMER_CONFIG,
        paraformer / layout.PARAFORMER_CMVN,
        paraformer / layout.PARAFORMER_WEIGHTS,
    ):
        assert path.is_file(), path
    copies = [checkpoint_root / layout.TTS_DIR / d / layout.CAMPPLUS_ONNX for d in layout.DECODER_DIRS]
    assert copies[0].read_bytes() == copies[1].read_bytes()
    config = yaml.safe_load((paraformer / layout.PARAFORMER_CONFIG).read_text())
    assert config["model"] == "ParaformerStreaming" and config["frontend"] == "WavFrontendOnline"
    assert config["encoder"] == "SANMEncoderChunkOpt" and "sanm_shfit" in config["encoder_conf"]
    codebook = np.load(tok / layout.LINGUISTIC_CODEBOOK)
    assert codebook.shape == (1024, config["encoder_conf"]["output_size"]) and codebook.dtype == np.float32


def test_onnx_files_have_the_interfaces_the_reference_reads(checkpoint_root, campplus_path):
    vq06 = ort.InferenceSession(str(checkpoint_root / layout.TOKENIZER_DIR / layout.SEMANTIC_TOKENIZER_ONNX))
    feats, length = vq06.get_inputs()
    assert (feats.name, feats.type, feats.shape[:2]) == ("feats", "tensor(float)", [1, 128])
    assert (length.name, length.type, length.shape) == ("feats_length", "tensor(int32)", [1])
    out = vq06.run(None, {"feats": np.zeros((1, 128, 300), np.float32), "feats_length": np.array([300], np.int32)})[0]
    assert np.issubdtype(out.dtype, np.integer) and out.size == 75 and out.min() >= 0 and out.max() < 4096
    campplus = ort.InferenceSession(str(campplus_path))
    (inp,), (outp,) = campplus.get_inputs(), campplus.get_outputs()
    assert (inp.name, inp.type, inp.shape[0], inp.shape[2]) == ("input", "tensor(float)", 1, 80)
    assert outp.name == "output" and outp.shape == [1, 192]
