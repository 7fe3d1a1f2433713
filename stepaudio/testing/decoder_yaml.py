"""Write a ``DecoderConfig`` back as ``cosyvoice.yaml`` in the published hyperpyyaml layout (tags and all).

The tiny decoder trees the project writes go through the same parser (``stepaudio.decoder.config``) as the
downloaded files, so the writer reproduces the published file's structure: seed lines, ``!new:`` classes,
``!ref`` links and the keys in the published order. Values the parser does not read (dropout rates) keep the
published numbers.
"""

from __future__ import annotations

from typing import Any

from stepaudio.decoder.config import (
    CFMConfig,
    DecoderConfig,
    EncoderConfig,
    EstimatorConfig,
    FlowConfig,
    HiFTConfig,
    LengthRegulatorConfig,
    MelConfig,
)

INDENT = "    "


def yaml_value(value: Any) -> str:
    """A scalar or list spelled the way the published file spells it (``True``, ``'mel'``, ``1e-06``, ``[1, 2]``)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        return f"{value:.0e}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(yaml_value(item) for item in value) + "]"
    return str(value)


def _keys(depth: int, **values: str) -> list[str]:
    """``key: value`` lines at ``depth`` indents, in the order given (already-formatted values)."""
    return [f"{INDENT * depth}{key}: {value}" for key, value in values.items()]


def _encoder_lines(encoder: EncoderConfig) -> list[str]:
    return ["    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder"] + _keys(
        2,
        output_size=str(encoder.output_size),
        attention_heads=str(encoder.attention_heads),
        linear_units=str(encoder.linear_units),
        num_blocks=str(encoder.num_blocks),
        dropout_rate="0.01",
        positional_dropout_rate="0.01",
        attention_dropout_rate="0.01",
        normalize_before=yaml_value(encoder.normalize_before),
        input_layer=yaml_value(encoder.input_layer),
        pos_enc_layer_type=yaml_value(encoder.pos_enc_layer_type),
        selfattention_layer_type=yaml_value(encoder.selfattention_layer_type),
        input_size=str(encoder.input_size),
        use_cnn_module=yaml_value(encoder.use_cnn_module),
        macaron_style=yaml_value(encoder.macaron_style),
    )


def _length_regulator_lines(regulator: LengthRegulatorConfig) -> list[str]:
    return ["    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator"] + _keys(
        2, channels=str(regulator.channels), sampling_ratios=yaml_value(regulator.sampling_ratios)
    )


def _cfm_lines(cfm: CFMConfig, estimator: EstimatorConfig) -> list[str]:
    lines = ["    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM"]
    lines += _keys(2, in_channels=str(cfm.in_channels), n_spks=str(cfm.n_spks), spk_emb_dim=str(cfm.spk_emb_dim))
    lines += ["        cfm_params: !new:omegaconf.DictConfig", "            content:"]
    lines += _keys(
        4,
        sigma_min=yaml_value(cfm.sigma_min),
        solver=yaml_value(cfm.solver),
        t_scheduler=yaml_value(cfm.t_scheduler),
        training_cfg_rate=str(cfm.training_cfg_rate),
        inference_cfg_rate=str(cfm.inference_cfg_rate),
        reg_loss_type=yaml_value(cfm.reg_loss_type),
    )
    lines.append("        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder")
    lines += _keys(
        3,
        in_channels=str(estimator.in_channels),
        out_channels=str(estimator.out_channels),
        channels=yaml_value(estimator.channels),
        dropout=str(estimator.dropout),
        attention_head_dim=str(estimator.attention_head_dim),
        n_blocks=str(estimator.n_blocks),
        num_mid_blocks=str(estimator.num_mid_blocks),
        num_heads=str(estimator.num_heads),
        act_fn=yaml_value(estimator.act_fn),
    )
    return lines


def _flow_lines(flow: FlowConfig) -> list[str]:
    lines = ["flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec"]
    lines += _keys(1, input_size=str(flow.input_size), output_size=str(flow.output_size),
                   spk_embed_dim="!ref <spk_embed_dim>", output_type=yaml_value(flow.output_type),
                   vocab_size=str(flow.vocab_size), input_frame_rate=str(flow.input_frame_rate),
                   only_mask_loss=yaml_value(flow.only_mask_loss))
    return (lines + _encoder_lines(flow.encoder) + _length_regulator_lines(flow.length_regulator)
            + _cfm_lines(flow.cfm, flow.estimator))


def _hift_lines(hift: HiFTConfig) -> list[str]:
    lines = ["hift: !new:cosyvoice.hifigan.generator.HiFTGenerator"]
    lines += _keys(
        1,
        in_channels=str(hift.in_channels),
        base_channels=str(hift.base_channels),
        nb_harmonics=str(hift.nb_harmonics),
        sampling_rate="!ref <sample_rate>",
        nsf_alpha=str(hift.nsf_alpha),
        nsf_sigma=str(hift.nsf_sigma),
        nsf_voiced_threshold=f"{hift.nsf_voiced_threshold:g}",
        upsample_rates=yaml_value(hift.upsample_rates),
        upsample_kernel_sizes=yaml_value(hift.upsample_kernel_sizes),
    )
    lines += ["    istft_params:"] + _keys(2, n_fft=str(hift.n_fft), hop_len=str(hift.hop_len))
    lines += _keys(
        1,
        resblock_kernel_sizes=yaml_value(hift.resblock_kernel_sizes),
        resblock_dilation_sizes=yaml_value(hift.resblock_dilation_sizes),
        source_resblock_kernel_sizes=yaml_value(hift.source_resblock_kernel_sizes),
        source_resblock_dilation_sizes=yaml_value(hift.source_resblock_dilation_sizes),
        lrelu_slope=str(hift.lrelu_slope),
        audio_limit=str(hift.audio_limit),
    )
    lines.append("    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor")
    lines += _keys(2, num_class=str(hift.f0_num_class), in_channels=str(hift.f0_in_channels),
                   cond_channels=str(hift.f0_cond_channels))
    return lines


def _mel_lines(mel: MelConfig) -> list[str]:
    fmax = yaml_value(None) if mel.fmax is None else format(mel.fmax, "g")
    return ["feat_extractor: !name:cosyvoice.matcha.audio.mel_spectrogram"] + _keys(
        1,
        n_fft=str(mel.n_fft),
        num_mels=str(mel.num_mels),
        sampling_rate="!ref <sample_rate>",
        hop_size=str(mel.hop_size),
        win_size=str(mel.win_size),
        fmin=f"{mel.fmin:g}",
        fmax=fmax,
        center=yaml_value(mel.center),
    )


def render_yaml(config: DecoderConfig) -> str:
    """``cosyvoice.yaml`` text for ``config`` in the published hyperpyyaml layout."""
    header = [
        "# set random seed, so that you may reproduce your result.",
        "__set_seed1: !apply:random.seed [1986]",
        "__set_seed2: !apply:numpy.random.seed [1986]",
        "__set_seed3: !apply:torch.manual_seed [1986]",
        "__set_seed4: !apply:torch.cuda.manual_seed_all [1986]",
        "",
        "# fixed params",
        f"sample_rate: {config.sample_rate}",
        f"spk_embed_dim: {config.flow.spk_embed_dim}",
        "",
        "# model params",
    ]
    lines = header + _flow_lines(config.flow) + [""] + _hift_lines(config.hift)
    lines += ["", "# processor functions"] + _mel_lines(config.mel) + [""]
    return "\n".join(lines)
