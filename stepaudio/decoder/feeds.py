"""The flow decoder's and vocoder's I/O contract (tensor names) and the checks of one request's feeds that the
served models run before batching (numpy only: the ONNX backend stubs load them without importing torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stepaudio.decoder.config import DecoderConfig, load_config

# The I/O contract shared by both runners, the ONNX exports and the served flow_decoder / vocoder models.
FLOW_INPUTS = (
    "tokens",
    "token_lens",
    "prompt_tokens",
    "prompt_token_lens",
    "prompt_mel",
    "prompt_mel_lens",
    "speaker_embedding",
    "noise",
)
FLOW_OUTPUTS = ("mel", "mel_lens")
VOCODER_INPUTS = ("mel", "mel_lens", "source_phase", "source_noise")
VOCODER_OUTPUTS = ("wave", "wave_lens", "f0")

# -- Feed validation ------------------------------------------------------------------------------------------------
# What one request to a served flow_decoder / vocoder may hold (its feeds, batch rows included). The CPU backend runs
# these checks per request before batching (its ``feed_validator`` parameter names the factories below); the native
# GPU backend cannot, so there the decoders are internal models (docs/decoder-contract.md).


@dataclass(frozen=True)
class _Feed:
    kind: str  # "ids": decoder ids in [0, vocab); "lens": per-row lengths; "float": finite floats
    dims: tuple[int | str, ...] = ()  # per-row dims: a size the config fixes, or the name of a padded (free) dim
    counts: str | None = None  # for "lens": the padded dim whose valid part it counts
    least: int = 0  # for "lens": its smallest valid value


def _flow_rules(config: DecoderConfig) -> dict[str, _Feed]:
    flow = config.flow
    return {
        "tokens": _Feed("ids", ("tokens",)),
        "token_lens": _Feed("lens", counts="tokens", least=1),
        "prompt_tokens": _Feed("ids", ("prompt_tokens",)),
        "prompt_token_lens": _Feed("lens", counts="prompt_tokens"),
        "prompt_mel": _Feed("float", ("prompt_frames", flow.output_size)),
        "prompt_mel_lens": _Feed("lens", counts="prompt_frames"),
        "speaker_embedding": _Feed("float", (flow.spk_embed_dim,)),
        "noise": _Feed("float", (flow.output_size, "frames")),
    }


def _vocoder_rules(config: DecoderConfig) -> dict[str, _Feed]:
    hift = config.hift
    return {
        "mel": _Feed("float", (hift.in_channels, "frames")),
        "mel_lens": _Feed("lens", counts="frames", least=1),
        "source_phase": _Feed("float", (hift.n_harmonic_channels,)),
        "source_noise": _Feed("float", (hift.n_harmonic_channels, "samples")),
    }


def _check_feeds(
    feeds: dict[str, np.ndarray], rules: dict[str, _Feed], vocab: int
) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Names, shapes, dtypes and values against ``rules`` → (padded dim sizes by name, the lens inputs)."""
    if set(feeds) != set(rules):
        raise ValueError(f"inputs must be {list(rules)}, got {sorted(feeds)}")
    rows = None
    dims: dict[str, int] = {}
    arrays = {name: np.asarray(feeds[name]) for name in rules}
    for name, rule in rules.items():
        shape = arrays[name].shape
        if len(shape) != 1 + len(rule.dims):
            raise ValueError(f"{name} must have {1 + len(rule.dims)} dims (batch, {rule.dims}), got shape {shape}")
        rows = shape[0] if rows is None else rows
        if shape[0] != rows or rows < 1:
            raise ValueError(f"{name} has {shape[0]} rows; every input needs the same number (≥ 1) of rows")
        for want, got in zip(rule.dims, shape[1:]):
            if isinstance(want, int) and got != want:
                raise ValueError(f"{name} must have shape (batch, {', '.join(map(str, rule.dims))}), got {shape}")
            if isinstance(want, str) and dims.setdefault(want, got) != got:
                raise ValueError(f"{name}: padded dim {want} is {got} here but {dims[want]} elsewhere")
    lens = {}
    for name, rule in rules.items():
        value = arrays[name]
        kind = value.dtype.kind
        if rule.kind in ("ids", "lens") and kind not in "iu":
            raise ValueError(f"{name} must be integers, got dtype {value.dtype}")
        if rule.kind == "float" and (kind != "f" or not np.all(np.isfinite(value))):
            raise ValueError(f"{name} must be finite floats (NaN or infinity found, or dtype {value.dtype})")
        if rule.kind == "ids" and value.size and (value.min() < 0 or value.max() >= vocab):
            bad = value.min() if value.min() < 0 else value.max()
            raise ValueError(f"{name} contains id {bad}; decoder ids must be in [0, {vocab})")
        if rule.kind == "lens":
            high = dims[rule.counts]
            bad = value[(value < rule.least) | (value > high)]
            if bad.size:
                raise ValueError(f"{name} {bad[0]} is out of range [{rule.least}, {high}] (padded {rule.counts} dim)")
            lens[name] = value.astype(np.int64)
    return dims, lens


def validate_flow_feeds(
    feeds: dict[str, np.ndarray], config: DecoderConfig, max_tokens: int, max_mel_frames: int
) -> None:
    """One flow_decoder request (``FLOW_INPUTS``, batch rows included) → ``ValueError`` unless the graph can run it
    as intended: ids in the vocabulary, lengths within their padded dims, finite floats, config shapes, prompt ids
    + target ids per row ≤ ``max_tokens``, mel frames (prompt + target) per row ≤ ``max_mel_frames``, and noise
    wide enough for the padded prompt mel plus each row's target frames."""
    dims, lens = _check_feeds(feeds, _flow_rules(config), config.flow.vocab_size)
    n_tokens = dims["tokens"] + dims["prompt_tokens"]
    if n_tokens > max_tokens:
        raise ValueError(f"{n_tokens} decoder ids per row (prompt + target) exceeds the limit of {max_tokens}")
    if dims["frames"] > max_mel_frames:
        raise ValueError(f"{dims['frames']} mel frames per row (noise width) exceeds the limit of {max_mel_frames}")
    # The output mel is noise width − padded prompt frames wide; each row's target must fit in it.
    target = max(config.flow.mel_frames_for_tokens(int(n)) for n in lens["token_lens"])
    if dims["frames"] - dims["prompt_frames"] < target:
        raise ValueError(
            f"noise has {dims['frames']} frames; it needs prompt_mel's {dims['prompt_frames']} + {target} target "
            f"frames (mel_frames_for_tokens of token_lens)"
        )
    unpaired = (lens["prompt_token_lens"] == 0) != (lens["prompt_mel_lens"] == 0)
    if np.any(unpaired):
        raise ValueError("prompt_token_lens and prompt_mel_lens must be both 0 or both > 0 in each row")


def validate_vocoder_feeds(feeds: dict[str, np.ndarray], config: DecoderConfig, max_mel_frames: int) -> None:
    """One vocoder request (``VOCODER_INPUTS``, batch rows included) → ``ValueError`` unless finite, of the config's
    shapes, mel_lens within the padded frames ≤ ``max_mel_frames``, and source_noise exactly 256 samples per padded
    frame (the graph folds it into (frames, 256))."""
    dims, _ = _check_feeds(feeds, _vocoder_rules(config), config.flow.vocab_size)
    if dims["frames"] > max_mel_frames:
        raise ValueError(f"{dims['frames']} mel frames per row exceeds the limit of {max_mel_frames}")
    samples = dims["frames"] * config.hift.samples_per_frame
    if dims["samples"] != samples:
        hop = config.hift.samples_per_frame
        raise ValueError(f"source_noise must have {samples} samples per row ({hop} per mel frame), got {dims['samples']}")


def _int_parameter(parameters: dict[str, str], key: str) -> int:
    try:
        value = int(parameters[key])
    except (KeyError, ValueError):
        got = parameters.get(key)
        raise ValueError(f"the feed validator needs an integer {key!r} parameter, got {got!r}") from None
    if value < 1:
        raise ValueError(f"parameter {key!r} must be ≥ 1, got {value}")
    return value


def _decoder_config(parameters: dict[str, str]) -> DecoderConfig:
    if not parameters.get("decoder_dir"):
        raise ValueError("the feed validator needs the 'decoder_dir' parameter (the graph's decoder folder)")
    return load_config(parameters["decoder_dir"])


def flow_feed_validator(parameters: dict[str, str]) -> Callable[[dict[str, np.ndarray]], None]:
    """A served model's parameters (``decoder_dir``, ``max_tokens``, ``max_mel_frames``) → a check of one request."""
    config = _decoder_config(parameters)
    max_tokens, max_frames = _int_parameter(parameters, "max_tokens"), _int_parameter(parameters, "max_mel_frames")
    return lambda feeds: validate_flow_feeds(feeds, config, max_tokens, max_frames)


def vocoder_feed_validator(parameters: dict[str, str]) -> Callable[[dict[str, np.ndarray]], None]:
    """A served model's parameters (``decoder_dir``, ``max_mel_frames``) → a check of one request."""
    config = _decoder_config(parameters)
    max_frames = _int_parameter(parameters, "max_mel_frames")
    return lambda feeds: validate_vocoder_feeds(feeds, config, max_frames)


# -- Ragged batching ------------------------------------------------------------------------------------------------
# Requests of different lengths share one graph run: each input is zero-padded at the end of its free dims, and each
# output is cut back to the shape the request gets alone. The graphs mask every row by its own lengths, so padding
# changes no valid value (test_batched_equals_one_at_a_time); outside the valid part both are zero. The CPU backend
# uses these through its ``ragged_batching`` parameter (with ``allow_ragged_batch`` inputs in the config).

# A bucket's longest row is at most this many times its shortest: bounds the work spent on padding.
BUCKET_RATIO = 1.5


def _pad_to(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    if array.shape[axis] == size:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths)


def length_buckets(lengths: dict[int, int], ratio: float = BUCKET_RATIO) -> list[list[int]]:
    """Request index → length ⇒ groups of indices, shortest first, each group's longest ≤ ratio × its shortest."""
    groups: list[list[int]] = []
    smallest = 0
    for index in sorted(lengths, key=lambda i: (lengths[i], i)):
        if not groups or lengths[index] > ratio * smallest:
            groups.append([])
            smallest = max(lengths[index], 1)
        groups[-1].append(index)
    return groups


class _RaggedBatching:
    """Group, pad and cut one decoder graph's requests (feeds by graph input name, batch rows first)."""

    length_input: str  # the input whose last dim is a request's length for bucketing

    def buckets(self, feeds: dict[int, dict[str, np.ndarray]]) -> list[list[int]]:
        return length_buckets({i: feed[self.length_input].shape[-1] for i, feed in feeds.items()})

    def sizes(self, feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[int, int]]:
        """Input name → (axis, padded size)."""
        raise NotImplementedError

    def trims(self, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
        """Output name → (axis, size) this request gets alone."""
        raise NotImplementedError

    def pad(self, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        sizes = self.sizes(feeds)
        padded = {}
        for name in feeds[0]:
            parts = [feed[name] for feed in feeds]
            if name in sizes:
                axis, size = sizes[name]
                parts = [_pad_to(part, axis, size) for part in parts]
            padded[name] = np.concatenate(parts)
        return padded

    def cut(self, outputs: dict[str, np.ndarray], feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Outputs of ``pad(feeds)`` → each request's own outputs."""
        results, row = [], 0
        for feed in feeds:
            rows = next(iter(feed.values())).shape[0]
            own = {}
            for name, value in outputs.items():
                part = value[row : row + rows]
                if name in (trims := self.trims(feed)):
                    axis, size = trims[name]
                    part = np.take(part, np.arange(size), axis=axis)
                own[name] = part
            results.append(own)
            row += rows
        return results


class FlowBatching(_RaggedBatching):
    """flow_decoder: ids, prompt ids and prompt mel pad at their ends; noise pads to the padded prompt mel plus the
    widest target part, so each row's target (output mel = noise width − prompt mel width) fits."""

    length_input = "noise"

    def sizes(self, feeds):
        prompt = max(f["prompt_mel"].shape[1] for f in feeds)
        target = max(f["noise"].shape[2] - f["prompt_mel"].shape[1] for f in feeds)
        return {
            "tokens": (1, max(f["tokens"].shape[1] for f in feeds)),
            "prompt_tokens": (1, max(f["prompt_tokens"].shape[1] for f in feeds)),
            "prompt_mel": (1, prompt),
            "noise": (2, prompt + target),
        }

    def trims(self, feed):
        return {"mel": (2, feed["noise"].shape[2] - feed["prompt_mel"].shape[1])}


class VocoderBatching(_RaggedBatching):
    """vocoder: mel pads in frames, source noise by 256 samples per frame; wave and f0 are cut to the request's own."""

    length_input = "mel"

    def __init__(self, samples_per_frame: int):
        self.hop = samples_per_frame

    def sizes(self, feeds):
        frames = max(f["mel"].shape[2] for f in feeds)
        return {"mel": (2, frames), "source_noise": (2, frames * self.hop)}

    def trims(self, feed):
        frames = feed["mel"].shape[2]
        return {"wave": (1, frames * self.hop), "f0": (1, frames)}


def flow_batching(parameters: dict[str, str]) -> FlowBatching:
    """The CPU backend's ``ragged_batching`` factory for flow_decoder (the model's string parameters, unused)."""
    return FlowBatching()


def vocoder_batching(parameters: dict[str, str]) -> VocoderBatching:
    """The CPU backend's ``ragged_batching`` factory for vocoder (``decoder_dir`` gives the samples per frame)."""
    return VocoderBatching(_decoder_config(parameters).hift.samples_per_frame)
