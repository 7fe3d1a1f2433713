"""cosyvoice.yaml reading/writing, reference defaults and the real-size parameter counts."""

from __future__ import annotations

import pytest
import torch

from stepaudio.decoder import DecoderConfig, mel_frames_for_tokens
from stepaudio.decoder.checkpoint import build_flow, build_hift, parameter_count
from stepaudio.decoder.config import load_hyperyaml
from stepaudio.testing.decoder import tiny_config
from stepaudio.testing.decoder_yaml import render_yaml

# Trimmed from the layout of FunAudioLLM/CosyVoice examples/libritts/cosyvoice/conf/cosyvoice.yaml (Apache-2.0):
# the tags the loader must understand, values as the Step-Audio 25 Hz decoder states them (docs/checkpoints.md#decoder-folders).
HYPERPYYAML = """
__set_seed1: !apply:random.seed [1986]
sample_rate: 22050
spk_embed_dim: 192
flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    vocab_size: 5120
    input_frame_rate: 41.667
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: 512
        attention_heads: 8
        num_blocks: 3
        input_size: 512
        use_cnn_module: False
        macaron_style: False
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                inference_cfg_rate: 0.5
hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    sampling_rate: !ref <sample_rate>
    istft_params:
        n_fft: 16
        hop_len: 4
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        cond_channels: 256
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    fmax: 8000
"""


def test_hyperpyyaml_tags_refs_and_defaults():
    config = DecoderConfig.from_yaml_text(HYPERPYYAML)
    assert config.flow.spk_embed_dim == 192  # via !ref
    assert config.flow.encoder.num_blocks == 3  # stated
    assert config.flow.encoder.linear_units == 2048  # not stated → reference default
    assert config.flow.cfm.inference_cfg_rate == 0.5  # inside !new:omegaconf.DictConfig content
    assert config.flow.cfm.sigma_min == pytest.approx(1e-6)  # "1e-06" is a float as hyperpyyaml reads it
    assert config.flow.estimator.num_mid_blocks == 12
    assert config.hift.f0_cond_channels == 256
    assert config.hift.sampling_rate == 22050
    assert config.mel.fmax == 8000
    raw = load_hyperyaml(HYPERPYYAML)
    assert raw["flow"].class_name == "MaskedDiffWithXvec"
    assert raw["__set_seed1"].args == (1986,)


def test_rendered_yaml_round_trips_in_published_format():
    for config in (tiny_config(), DecoderConfig()):
        text = render_yaml(config)
        assert "flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec" in text
        assert "spk_embed_dim: !ref <spk_embed_dim>" in text
        assert "cfm_params: !new:omegaconf.DictConfig" in text
        assert DecoderConfig.from_yaml_text(text) == config


def test_unsupported_configs_are_rejected():
    with pytest.raises(ValueError, match="use_cnn_module"):
        DecoderConfig.from_yaml_text(HYPERPYYAML.replace("use_cnn_module: False", "use_cnn_module: True"))
    with pytest.raises(ValueError, match="names no top-level key"):
        DecoderConfig.from_yaml_text(HYPERPYYAML.replace("!ref <sample_rate>", "!ref <rate>"))
    with pytest.raises(ValueError, match="no 'hift' section"):
        DecoderConfig.from_yaml_text(HYPERPYYAML.split("hift:")[0])
    with pytest.raises(ValueError, match="expected"):
        DecoderConfig.from_yaml_text(HYPERPYYAML.replace("HiFTGenerator", "HiFiGan"))


def test_real_size_parameter_counts_match_the_published_files():
    """flow.pt is 421.6 MB fp32 = 105,399,040 params; hift.pt 81.9 MB ≈ 20.46 M (docs/checkpoints.md#parameter-counts)."""
    config = DecoderConfig()
    flow, hift = build_flow(config, "meta"), build_hift(config, "meta")
    assert parameter_count(flow) == 105_399_040
    assert parameter_count(hift) == 20_460_591
    shapes = {k: tuple(v.shape) for k, v in {**flow.state_dict()}.items()}
    assert shapes["input_embedding.weight"] == (5120, 512)
    assert shapes["spk_embed_affine_layer.weight"] == (80, 192)
    assert shapes["encoder_proj.weight"] == (80, 512)
    assert shapes["encoder.embed.out.0.weight"] == (512, 512)
    assert shapes["encoder.encoders.5.self_attn.pos_bias_u"] == (8, 64)
    assert shapes["length_regulator.model.12.weight"] == (80, 80, 1)
    assert shapes["length_regulator.model.10.weight"] == (80,)
    assert shapes["decoder.estimator.time_mlp.linear_1.weight"] == (1024, 320)
    assert shapes["decoder.estimator.down_blocks.0.0.block1.block.0.weight"] == (256, 320, 3)
    assert shapes["decoder.estimator.down_blocks.0.1.3.attn1.to_q.weight"] == (512, 256)
    assert shapes["decoder.estimator.mid_blocks.11.1.0.attn1.to_out.0.weight"] == (256, 512)
    assert shapes["decoder.estimator.up_blocks.0.1.0.ff.net.0.proj.weight"] == (1024, 256)
    assert shapes["decoder.estimator.up_blocks.0.2.conv.weight"] == (256, 256, 4)
    assert shapes["decoder.estimator.final_proj.weight"] == (80, 256, 1)
    hift_shapes = {k: tuple(v.shape) for k, v in hift.state_dict().items()}
    assert hift_shapes["conv_pre.weight_v"] == (512, 80, 7)
    assert hift_shapes["ups.0.weight_v"] == (512, 256, 16)
    assert hift_shapes["ups.1.weight_v"] == (256, 128, 16)
    assert hift_shapes["conv_post.weight_v"] == (18, 128, 7)
    assert hift_shapes["source_downs.0.weight"] == (256, 18, 16)
    assert hift_shapes["source_downs.1.weight"] == (128, 18, 1)
    assert hift_shapes["m_source.l_linear.weight"] == (1, 9)
    assert hift_shapes["f0_predictor.condnet.8.weight_v"] == (512, 512, 3)
    assert hift_shapes["f0_predictor.classifier.weight"] == (1, 512)
    assert hift_shapes["resblocks.5.activations2.2.alpha"] == (128,)


def test_mel_frames_follow_the_reference_formula():
    config = DecoderConfig()
    flow = build_flow(config, "meta")  # mel_frames is integer arithmetic on the lengths, independent of weights
    exact = flow.mel_frames(torch.arange(0, 20001))
    expected = [int(n / 41.667 * 22050 / 256) for n in range(20001)]
    assert exact.tolist() == expected
    assert [mel_frames_for_tokens(n) for n in (0, 1, 125)] == [0, 2, 258]  # Appendix B: 125 ids → 258 frames
