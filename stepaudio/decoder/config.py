"""``cosyvoice.yaml`` → plain dataclasses, without CosyVoice or hyperpyyaml.

The published file is hyperpyyaml: ``!new:pkg.Class`` (construct with the mapping as kwargs), ``!name:pkg.func``
(a partial), ``!apply:pkg.func [args]`` (call at load time) and ``!ref <key>`` (another top-level value). A small
PyYAML loader records each tagged node as ``Tagged(kind, target, kwargs)`` and resolves ``!ref``; the builders below
read the values they need by class name. Anything the yaml does not state falls back to the reference defaults
(docs/checkpoints.md#decoder-folders — the configuration whose parameter count matches the published ``flow.pt``/``hift.pt``).

The writer of the published format (tiny test trees) is ``stepaudio.testing.decoder_yaml``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from stepaudio.checkpoints import layout


@dataclass(frozen=True)
class Tagged:
    """A hyperpyyaml ``!new:`` / ``!name:`` / ``!apply:`` node: what it names and the arguments it gives."""

    kind: str  # "new", "name" or "apply"
    target: str  # dotted path, e.g. "cosyvoice.flow.flow.MaskedDiffWithXvec"
    kwargs: dict[str, Any]
    args: tuple = ()

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class _Ref:
    key: str


class _HyperYamlLoader(yaml.SafeLoader):
    """SafeLoader that records hyperpyyaml tags instead of importing anything."""


def _construct_tagged(kind: str):
    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
        if isinstance(node, yaml.MappingNode):
            return Tagged(kind, suffix, loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return Tagged(kind, suffix, {}, tuple(loader.construct_sequence(node, deep=True)))
        value = loader.construct_scalar(node)
        return Tagged(kind, suffix, {}, () if value in ("", None) else (value,))

    return construct


def _construct_ref(loader: yaml.SafeLoader, node: yaml.Node) -> _Ref:
    text = str(loader.construct_scalar(node)).strip()
    match = re.fullmatch(r"<([^<>]+)>", text)
    if not match:
        raise ValueError(f"unsupported !ref expression {text!r} (only '<key>' is supported)")
    return _Ref(match.group(1))


for _kind in ("new", "name", "apply"):
    _HyperYamlLoader.add_multi_constructor(f"!{_kind}:", _construct_tagged(_kind))
_HyperYamlLoader.add_constructor("!ref", _construct_ref)
# hyperpyyaml reads 1e-06 as a float; plain YAML 1.1 needs a dot, so accept the exponent-only form too.
_HyperYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _resolve(value: Any, top: dict[str, Any], depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError("!ref chain too deep (cycle?)")
    if isinstance(value, _Ref):
        if value.key not in top:
            raise ValueError(f"!ref <{value.key}> names no top-level key")
        return _resolve(top[value.key], top, depth + 1)
    if isinstance(value, Tagged):
        kwargs = {k: _resolve(v, top, depth + 1) for k, v in value.kwargs.items()}
        args = tuple(_resolve(v, top, depth + 1) for v in value.args)
        return Tagged(value.kind, value.target, kwargs, args)
    if isinstance(value, dict):
        return {k: _resolve(v, top, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, top, depth + 1) for v in value]
    return value


def load_hyperyaml(text: str) -> dict[str, Any]:
    """Parse hyperpyyaml text into plain values and ``Tagged`` nodes, with every ``!ref`` resolved."""
    raw = yaml.load(text, Loader=_HyperYamlLoader)
    if not isinstance(raw, dict):
        raise ValueError("cosyvoice.yaml must be a mapping at the top level")
    return {k: _resolve(v, raw) for k, v in raw.items()}


# ---------------------------------------------------------------------------------------------------------------
# Typed configuration; defaults = the published CosyVoice-300M-25Hz values (docs/checkpoints.md#decoder-folders).


@dataclass(frozen=True)
class EncoderConfig:
    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    input_layer: str = "linear"
    pos_enc_layer_type: str = "rel_pos_espnet"
    selfattention_layer_type: str = "rel_selfattn"
    normalize_before: bool = True
    macaron_style: bool = False
    use_cnn_module: bool = False
    activation_type: str = "swish"
    key_bias: bool = True


@dataclass(frozen=True)
class LengthRegulatorConfig:
    channels: int = 80
    sampling_ratios: tuple[int, ...] = (1, 1, 1, 1)
    out_channels: int | None = None
    groups: int = 1


@dataclass(frozen=True)
class CFMConfig:
    in_channels: int = 240
    n_spks: int = 1
    spk_emb_dim: int = 80
    sigma_min: float = 1e-6
    solver: str = "euler"
    t_scheduler: str = "cosine"
    training_cfg_rate: float = 0.2
    inference_cfg_rate: float = 0.7
    reg_loss_type: str = "l1"
    n_timesteps: int = 10  # hard-coded in MaskedDiffWithXvec.inference, not a yaml key


@dataclass(frozen=True)
class EstimatorConfig:
    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    act_fn: str = "gelu"


@dataclass(frozen=True)
class FlowConfig:
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    output_type: str = "mel"
    vocab_size: int = 5120
    input_frame_rate: float = 41.667
    only_mask_loss: bool = True
    mel_sampling_rate: int = 22050  # MaskedDiffWithXvec.mel_feat_conf (class default; not in the yaml)
    mel_hop_size: int = 256
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    length_regulator: LengthRegulatorConfig = field(default_factory=LengthRegulatorConfig)
    cfm: CFMConfig = field(default_factory=CFMConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)

    def mel_frames_ratio(self) -> Fraction:
        """Exact mel frames per token: ``sampling_rate / (input_frame_rate · hop)`` as a fraction."""
        rate = Fraction(str(self.input_frame_rate))
        return Fraction(self.mel_sampling_rate) / (rate * self.mel_hop_size)

    def mel_frames_for_tokens(self, n_tokens: int) -> int:
        """Target mel frames for ``n_tokens`` decoder tokens, the reference's own float formula."""
        return int(n_tokens / self.input_frame_rate * self.mel_sampling_rate / self.mel_hop_size)


@dataclass(frozen=True)
class HiFTConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_num_class: int = 1
    f0_in_channels: int = 80
    f0_cond_channels: int = 512

    @property
    def samples_per_frame(self) -> int:
        """Wave samples per mel frame (upsampling × iSTFT hop; 256 for the published config)."""
        total = self.hop_len
        for rate in self.upsample_rates:
            total *= rate
        return total

    @property
    def n_harmonic_channels(self) -> int:
        return self.nb_harmonics + 1


@dataclass(frozen=True)
class MelConfig:
    n_fft: int = 1024
    num_mels: int = 80
    sampling_rate: int = 22050
    hop_size: int = 256
    win_size: int = 1024
    fmin: float = 0.0
    fmax: float | None = 8000.0
    center: bool = False


@dataclass(frozen=True)
class DecoderConfig:
    sample_rate: int = 22050
    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)
    mel: MelConfig = field(default_factory=MelConfig)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DecoderConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read decoder config {path}: {exc}") from exc
        return cls.from_yaml_text(text)

    @classmethod
    def from_yaml_text(cls, text: str) -> DecoderConfig:
        top = load_hyperyaml(text)
        for key in ("flow", "hift"):
            if key not in top:
                raise ValueError(f"cosyvoice.yaml has no {key!r} section")
        config = cls(
            sample_rate=int(top.get("sample_rate", 22050)),
            flow=_flow_config(_expect(top["flow"], "MaskedDiffWithXvec")),
            hift=_hift_config(_expect(top["hift"], "HiFTGenerator")),
            mel=_mel_config(top.get("feat_extractor")),
        )
        config.validate()
        return config

    def validate(self) -> None:
        enc = self.flow.encoder
        if enc.input_size != self.flow.input_size:
            raise ValueError(f"encoder input_size {enc.input_size} != flow input_size {self.flow.input_size}")
        if enc.output_size % enc.attention_heads:
            raise ValueError("encoder output_size must be divisible by attention_heads")
        est = self.flow.estimator
        if est.in_channels != 4 * self.flow.output_size:
            raise ValueError("estimator in_channels must be 4 × flow output_size (x, mu, speaker, cond)")
        if any(c % 8 for c in est.channels):
            raise ValueError("estimator channels must be multiples of 8 (GroupNorm(8))")
        if self.flow.length_regulator.channels != self.flow.output_size:
            raise ValueError("length_regulator channels must equal flow output_size")
        if self.hift.in_channels != self.flow.output_size or self.mel.num_mels != self.flow.output_size:
            raise ValueError("flow output_size, hift in_channels and feat_extractor num_mels must agree")
        if self.hift.samples_per_frame != self.mel.hop_size:
            raise ValueError(
                f"HiFT samples per frame {self.hift.samples_per_frame} != mel hop {self.mel.hop_size}"
            )
        if len(self.hift.upsample_rates) != len(self.hift.source_resblock_kernel_sizes):
            raise ValueError("HiFT needs one source resblock per upsampling stage")


def _expect(node: Any, class_name: str) -> Tagged:
    if not isinstance(node, Tagged) or node.class_name != class_name:
        got = node.target if isinstance(node, Tagged) else type(node).__name__
        raise ValueError(f"expected !new:...{class_name}, got {got}")
    return node


def _pick(cls, kwargs: dict[str, Any], **renames: str):
    """Build dataclass ``cls`` from the kwargs it knows; yaml keys in ``renames`` map onto other field names."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in kwargs.items():
        name = renames.get(key, key)
        if name not in names:
            continue
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        values[name] = value
    return cls(**values)


def _flow_config(node: Tagged) -> FlowConfig:
    kw = node.kwargs
    encoder = _pick(EncoderConfig, _expect(kw["encoder"], "ConformerEncoder").kwargs) if "encoder" in kw else None
    if encoder is not None:
        if encoder.use_cnn_module or encoder.macaron_style:
            raise ValueError("ConformerEncoder with use_cnn_module/macaron_style is not the Step-Audio decoder")
        if (encoder.input_layer, encoder.pos_enc_layer_type, encoder.selfattention_layer_type) != (
            "linear",
            "rel_pos_espnet",
            "rel_selfattn",
        ):
            raise ValueError("only input_layer linear + rel_pos_espnet + rel_selfattn encoders are supported")
        if not encoder.normalize_before or encoder.activation_type != "swish":
            raise ValueError("only pre-norm encoders with swish feed-forward are supported")
    regulator = (
        _pick(LengthRegulatorConfig, _expect(kw["length_regulator"], "InterpolateRegulator").kwargs)
        if "length_regulator" in kw
        else None
    )
    cfm = estimator = None
    if "decoder" in kw:
        decoder = _expect(kw["decoder"], "ConditionalCFM")
        params = decoder.kwargs.get("cfm_params", {})
        if isinstance(params, Tagged):  # !new:omegaconf.DictConfig {content: {...}}
            params = params.kwargs.get("content", params.kwargs)
        cfm = _pick(CFMConfig, {**decoder.kwargs, **params})
        if cfm.solver != "euler" or cfm.t_scheduler != "cosine":
            raise ValueError("only the euler solver with the cosine t-schedule is supported")
        if "estimator" in decoder.kwargs:
            estimator = _pick(EstimatorConfig, _expect(decoder.kwargs["estimator"], "ConditionalDecoder").kwargs)
            if estimator.act_fn != "gelu":
                raise ValueError("only act_fn gelu transformer blocks are supported")
    mel_conf = kw.get("mel_feat_conf", {}) or {}
    base = _pick(FlowConfig, {k: v for k, v in kw.items() if not isinstance(v, Tagged)})
    return dataclasses.replace(
        base,
        encoder=encoder or EncoderConfig(),
        length_regulator=regulator or LengthRegulatorConfig(),
        cfm=cfm or CFMConfig(),
        estimator=estimator or EstimatorConfig(),
        mel_sampling_rate=int(mel_conf.get("sampling_rate", base.mel_sampling_rate)),
        mel_hop_size=int(mel_conf.get("hop_size", base.mel_hop_size)),
    )


def _hift_config(node: Tagged) -> HiFTConfig:
    kw = dict(node.kwargs)
    istft = kw.pop("istft_params", {}) or {}
    f0 = kw.pop("f0_predictor", None)
    f0_kwargs = {}
    if f0 is not None:
        f0_kwargs = {f"f0_{k}": v for k, v in _expect(f0, "ConvRNNF0Predictor").kwargs.items()}
    config = _pick(HiFTConfig, {**kw, **istft, **f0_kwargs})
    if config.f0_num_class != 1:
        raise ValueError("ConvRNNF0Predictor num_class must be 1")
    return config


def _mel_config(node: Any) -> MelConfig:
    if node is None:
        return MelConfig()
    if not isinstance(node, Tagged) or not node.target.endswith("mel_spectrogram"):
        raise ValueError("feat_extractor must be !name:...mel_spectrogram")
    return _pick(MelConfig, node.kwargs)


def load_config(decoder_dir: str | Path) -> DecoderConfig:
    """The config of a published decoder folder (its ``cosyvoice.yaml``)."""
    return DecoderConfig.from_yaml(Path(decoder_dir) / layout.DECODER_YAML)
