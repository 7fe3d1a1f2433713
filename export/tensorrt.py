"""TensorRT engines for ``flow_decoder.onnx`` and ``vocoder.onnx`` (GPU deployments).

    python -m export.tensorrt --model flow_decoder --onnx flow_decoder.onnx --out-dir plans/ --precision fp16
    python -m export.tensorrt --model vocoder --onnx vocoder.onnx --out-dir plans/ --precision bf16 --trtexec

One ``ShapeSpec`` (batch, target ids, prompt ids, prompt frames as min/opt/max) gives the optimization profile of
both graphs: every input's min/opt/max shape is its shape template evaluated at the spec's min/opt/max point (all
templates grow with the dims, so the boxes are consistent: e.g. the flow's ``noise`` width is prompt frames +
mel_frames(ids), the vocoder's ``mel`` length mel_frames(ids); frame widths are clipped to the spec's
``max_frames``). The default spec is ``ShapeSpec.from_caps`` of the render values that bound what the served entry
points accept (``decoder_max_batch_size``, ``decoder_max_tokens``, ``decoder_max_mel_frames``): one declaration for
the served caps and the profile, so every request the caps accept is inside the profile.

Precision: TensorRT 10 networks are built **strongly typed** by default (``--strongly-typed``, the only mode newer
TensorRT releases keep): the precision is the ONNX graph's own (an fp16/bf16 export), no builder precision flags, and
the engine name carries the graph's float type. ``--weakly-typed --precision fp16|bf16`` uses the builder flags of
TensorRT releases that still have them. Engines are named ``<model>.sm<CC>.trt<version>.<precision>.plan`` because a
plan only loads on the GPU architecture and TensorRT version that built it: build it in the NGC TensorRT container of
the same release as the serving Triton container (docs/gpu.md#tensorrt). The renderer serves such plans with
``--set decoder_gpu_platform=tensorrt_plan --set tensorrt_plans=DIR`` (``attach_plans``).

``flow_decoder.onnx`` must be the portable export (``python -m export.flow_onnx --portable``): the default one runs
attention as ONNX Runtime's ``com.microsoft.MultiHeadAttention``, which TensorRT's ONNX parser does not know.

The engine is built with the ``tensorrt`` Python API or, with ``--trtexec``, by the ``trtexec`` command line shown
by ``trtexec_command``. TensorRT is imported lazily: it cannot be installed on the CPU build machines, so only the
shape/profile/naming logic and the command line are unit-tested here; the engines themselves are validated only
where TensorRT exists (an NGC TensorRT or Triton container on a GPU).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stepaudio.checkpoints import layout
from stepaudio.decoder.config import DecoderConfig

PRECISIONS = ("fp32", "fp16", "bf16")
PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")  # decoder_gpu_platform
_PLAN_NAME = re.compile(r"(?P<model>flow_decoder|vocoder)\.sm(?P<cc>\d+)\.trt(?P<version>\d+(?:\.\d+)*)\."
                        r"(?P<precision>fp32|fp16|bf16)\.plan")
_ONNX_FLOATS = {1: "fp32", 10: "fp16", 16: "bf16"}  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16
MODELS = ("flow_decoder", "vocoder")
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input → (min, opt, max)


@dataclass(frozen=True)
class ShapeSpec:
    """(min, opt, max) of each free dimension of a decoder request batch."""

    batch: tuple[int, int, int] = (1, 4, 16)
    tokens: tuple[int, int, int] = (1, 250, 1250)  # ≈ 0.02 s, 6 s, 30 s of speech at 41.67 ids/s
    prompt_tokens: tuple[int, int, int] = (0, 150, 500)
    prompt_frames: tuple[int, int, int] = (0, 300, 1100)
    max_frames: int | None = None  # mel frames per row (noise width, vocoder mel) never exceed this; None: no clip

    @classmethod
    def from_caps(cls, max_batch: int, max_tokens: int, max_mel_frames: int) -> ShapeSpec:
        """The profile of what the served caps accept: up to ``max_batch`` rows of prompt + target ids ≤
        ``max_tokens`` (target ≥ 1) and mel frames ≤ ``max_mel_frames`` (feeds.validate_flow_feeds)."""
        for name, value in (("max_batch", max_batch), ("max_tokens", max_tokens), ("max_mel_frames", max_mel_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer ≥ 2, got {value!r}")
        opt = cls()
        return cls(batch=(1, min(opt.batch[1], max_batch), max_batch), tokens=(1, min(opt.tokens[1], max_tokens), max_tokens),
                   prompt_tokens=(0, min(opt.prompt_tokens[1], max_tokens - 1), max_tokens - 1),
                   prompt_frames=(0, min(opt.prompt_frames[1], max_mel_frames), max_mel_frames), max_frames=max_mel_frames)

    @classmethod
    def from_render_values(cls, values: dict[str, str] | None = None) -> ShapeSpec:
        """``from_caps`` of the render values (``export.render_repository.DEFAULTS`` overridden by ``values``)."""
        from export.render_repository import DEFAULTS

        merged = DEFAULTS | (values or {})
        return cls.from_caps(*(int(merged[key]) for key in ("decoder_max_batch_size", "decoder_max_tokens",
                                                            "decoder_max_mel_frames")))

    def validate(self) -> None:
        for name in ("batch", "tokens", "prompt_tokens", "prompt_frames"):
            low, opt, high = getattr(self, name)
            if not 0 <= low <= opt <= high:
                raise ValueError(f"{name} must satisfy 0 ≤ min ≤ opt ≤ max, got {(low, opt, high)}")
        if self.batch[0] < 1 or self.tokens[0] < 1:
            raise ValueError("batch and tokens need at least 1")

    def points(self) -> list[dict[str, int]]:
        """The min, opt and max points, each as {dimension: size}."""
        names = ("batch", "tokens", "prompt_tokens", "prompt_frames")
        return [{name: getattr(self, name)[i] for name in names} for i in range(3)]


def _templates(model: str, config: DecoderConfig, max_frames: int | None = None) -> dict[str, Callable[[dict[str, int]], Shape]]:
    mels, spk = config.flow.output_size, config.flow.spk_embed_dim
    harmonics, hop = config.hift.n_harmonic_channels, config.hift.samples_per_frame

    def clip(n: int) -> int:
        return n if max_frames is None else min(n, max_frames)

    def frames(d: dict[str, int]) -> int:
        return clip(config.flow.mel_frames_for_tokens(d["tokens"]))

    if model == "flow_decoder":
        return {
            "tokens": lambda d: (d["batch"], d["tokens"]),
            "token_lens": lambda d: (d["batch"],),
            "prompt_tokens": lambda d: (d["batch"], d["prompt_tokens"]),
            "prompt_token_lens": lambda d: (d["batch"],),
            "prompt_mel": lambda d: (d["batch"], d["prompt_frames"], mels),
            "prompt_mel_lens": lambda d: (d["batch"],),
            "speaker_embedding": lambda d: (d["batch"], spk),
            "noise": lambda d: (d["batch"], mels, clip(d["prompt_frames"] + frames(d))),
        }
    if model == "vocoder":
        return {
            "mel": lambda d: (d["batch"], mels, frames(d)),
            "mel_lens": lambda d: (d["batch"],),
            "source_phase": lambda d: (d["batch"], harmonics),
            "source_noise": lambda d: (d["batch"], harmonics, hop * frames(d)),
        }
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def profile(model: str, spec: ShapeSpec, config: DecoderConfig | None = None) -> Profile:
    """min/opt/max shape of every input of ``model`` for ``spec``."""
    spec.validate()
    templates = _templates(model, config or DecoderConfig(), spec.max_frames)
    low, opt, high = spec.points()
    return {name: (shape(low), shape(opt), shape(high)) for name, shape in templates.items()}


def engine_filename(model: str, compute_capability: tuple[int, int], trt_version: str, precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if not re.fullmatch(r"\d+(\.\d+)*", trt_version):
        raise ValueError(f"TensorRT version must look like 10.3.0, got {trt_version!r}")
    major, minor = compute_capability
    return f"{model}.sm{major}{minor}.trt{trt_version}.{precision}.plan"


def _dims(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(onnx_path: Path, engine_path: Path, shapes: Profile, precision: str, workspace_mib: int = 8192,
                    strongly_typed: bool = False):
    """The ``trtexec`` argv that builds ``engine_path`` with the same profile and precision as ``build_engine``
    (strongly typed: ``--stronglyTyped`` and no precision flag, the graph's types rule)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    command = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--memPoolSize=workspace:{workspace_mib}M",
    ]
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        command.append(f"{flag}=" + ",".join(f"{name}:{_dims(s[index])}" for name, s in shapes.items()))
    if strongly_typed:
        command.append("--stronglyTyped")
    elif precision != "fp32":
        command.append(f"--{precision}")
    return command


def parse_trtexec_version(banner: str) -> str:
    """'… [TensorRT v100300] …' → '10.3.0'. trtexec's banner encodes major·10000 + minor·100 + patch since
    TensorRT 10 and major·1000 + minor·100 + patch before (v8601 = 8.6.1)."""
    match = re.search(r"TensorRT v(\d+)", banner)
    if not match:
        raise ValueError("no 'TensorRT v<N>' in the trtexec output")
    number = int(match.group(1))
    major = number // 10000 if number >= 100000 else number // 1000
    minor = number // 100 % 100 if number >= 100000 else number // 100 % 10
    return f"{major}.{minor}.{number % 100}"


def gpu_compute_capability() -> tuple[int, int]:
    """Compute capability of GPU 0 (torch if it sees CUDA, else nvidia-smi)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_capability(0)
    if shutil.which("nvidia-smi") is None:
        raise ValueError("no CUDA GPU visible: TensorRT engines are built on the GPU that will run them")
    output = subprocess.run(
        ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, check=True
    ).stdout
    major, minor = output.strip().splitlines()[0].split(".")
    return int(major), int(minor)


def _tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise ValueError("the tensorrt package is not installed; use --trtexec or an NGC TensorRT/Triton container") from exc
    return tensorrt


def graph_precision(onnx_path: Path) -> str:
    """The float type most of an ONNX graph's float weights have (what a strongly typed engine runs in)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    counts: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_type in _ONNX_FLOATS:
            size = 1
            for dim in tensor.dims:
                size *= dim
            counts[_ONNX_FLOATS[tensor.data_type]] = counts.get(_ONNX_FLOATS[tensor.data_type], 0) + size
    if not counts:
        raise ValueError(f"{onnx_path}: no float weights to tell the graph's precision")
    return max(counts, key=counts.get)


def build_engine(onnx_path: Path, engine_path: Path, shapes: Profile, precision: str, workspace_mib: int = 8192,
                 strongly_typed: bool = True) -> Path:
    """Build and save a serialized engine with the ``tensorrt`` Python API. Strongly typed (default): the graph's
    types decide the precision and ``precision`` must be the graph's; weakly typed: ``precision`` sets the builder
    flags (releases that still have them)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = ""
        if "MultiHeadAttention" in errors:
            hint = " (ONNX Runtime's fused attention: export the flow with `python -m export.flow_onnx --portable`)"
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}{hint}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if not strongly_typed and precision != "fp32":
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None:
            raise ValueError(f"this TensorRT ({trt.__version__}) has no {precision.upper()} builder flag: export the "
                             f"graph in {precision} and build it strongly typed")
        config.set_flag(flag)
    optimization = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        optimization.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ValueError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(plan))
    return engine_path


@dataclass(frozen=True)
class PlanFile:
    path: Path
    model: str  # flow_decoder | vocoder
    compute_capability: str  # "9.0": Triton's cc_model_filenames key
    version: str


def find_plans(plans_dir: Path, model: str) -> list[PlanFile]:
    """The engines of ``model`` (template name) in ``plans_dir``, named as ``engine_filename`` names them."""
    found = []
    for path in sorted(Path(plans_dir).glob(f"{model}.sm*.plan")):
        match = _PLAN_NAME.fullmatch(path.name)
        if match and match["model"] == model:
            cc = match["cc"]
            found.append(PlanFile(path, model, f"{cc[:-1]}.{cc[-1]}", match["version"]))
    return found


def plan_config(plans: list[PlanFile]) -> str:
    """The GPU config lines that make Triton's TensorRT backend load the plan built for each GPU architecture
    (``cc_model_filenames``; a GPU of another architecture has no file and fails to load, as it must)."""
    return "\n".join(f'cc_model_filenames {{ key: "{p.compute_capability}" value: "{p.path.name}" }}' for p in plans)


def attach_plans(template: str, values: dict[str, str]) -> tuple[str, list[Path]]:
    """For a decoder template under ``decoder_gpu_platform``: its ``${decoder_gpu_model_files}`` text and the plan
    files to copy into its version folder. ``onnxruntime_onnx``: nothing (Triton loads ``model.onnx``)."""
    platform = values.get("decoder_gpu_platform", "onnxruntime_onnx")
    if platform not in PLATFORMS:
        raise ValueError(f"decoder_gpu_platform must be one of {PLATFORMS}, got {platform!r}")
    if platform == "onnxruntime_onnx" or template not in MODELS:
        return "", []
    plans_dir = values.get("tensorrt_plans", "")
    if not plans_dir or not Path(plans_dir).is_dir():
        raise ValueError(f"decoder_gpu_platform=tensorrt_plan needs tensorrt_plans=<folder of built plans>, "
                         f"got {plans_dir!r}")
    plans = find_plans(Path(plans_dir), template)
    if not plans:
        raise ValueError(f"no {template}.sm<CC>.trt<version>.<precision>.plan in {plans_dir} (python -m export.tensorrt)")
    versions = {p.version for p in plans}
    if len(versions) > 1 or len({p.compute_capability for p in plans}) < len(plans):
        raise ValueError(f"{template} plans in {plans_dir}: one plan per GPU architecture, all of one TensorRT "
                         f"version (the serving container's), got {[p.path.name for p in plans]}")
    return plan_config(plans), [p.path for p in plans]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="strongly typed: the graph's (read from it when omitted); weakly typed: builder flags")
    typing = parser.add_mutually_exclusive_group()
    typing.add_argument("--strongly-typed", dest="strongly_typed", action="store_true", default=True)
    typing.add_argument("--weakly-typed", dest="strongly_typed", action="store_false")
    parser.add_argument("--decoder-dir", type=Path, help="read dims from its cosyvoice.yaml (default: published)")
    parser.add_argument("--trtexec", action="store_true", help="build with the trtexec command line")
    parser.add_argument("--print-command", action="store_true", help="print the trtexec command and exit")
    parser.add_argument("--workspace-mib", type=int, default=8192)
    caps = ShapeSpec.from_render_values()  # the served caps: the profile covers every request they accept
    for name, default in (("batch", caps.batch), ("tokens", caps.tokens)):
        parser.add_argument(f"--{name}", type=int, nargs=3, default=default, metavar=("MIN", "OPT", "MAX"))
    parser.add_argument("--prompt-tokens", type=int, nargs=3, default=caps.prompt_tokens)
    parser.add_argument("--prompt-frames", type=int, nargs=3, default=caps.prompt_frames)
    parser.add_argument("--max-frames", type=int, default=caps.max_frames)
    args = parser.parse_args(argv)
    try:
        config = DecoderConfig.from_yaml(args.decoder_dir / layout.DECODER_YAML) if args.decoder_dir else DecoderConfig()
        spec = ShapeSpec(*(tuple(getattr(args, n)) for n in ("batch", "tokens", "prompt_tokens", "prompt_frames")),
                         max_frames=args.max_frames)
        shapes = profile(args.model, spec, config)
        if args.precision is None:
            args.precision = graph_precision(args.onnx) if args.strongly_typed else "fp16"
        if args.print_command:
            print(" ".join(trtexec_command(args.onnx, args.out_dir / f"{args.model}.plan", shapes, args.precision,
                                           strongly_typed=args.strongly_typed)))
            return 0
        if args.trtexec:
            if shutil.which("trtexec") is None:
                raise ValueError("trtexec is not on PATH")
            banner = subprocess.run(["trtexec", "--help"], capture_output=True, text=True).stdout
            version = parse_trtexec_version(banner)
        else:
            version = _tensorrt().__version__
        name = engine_filename(args.model, gpu_compute_capability(), version, args.precision)
        engine = args.out_dir / name
        if args.trtexec:
            command = trtexec_command(args.onnx, engine, shapes, args.precision, args.workspace_mib, args.strongly_typed)
            subprocess.run(command, check=True)
        else:
            build_engine(args.onnx, engine, shapes, args.precision, args.workspace_mib, args.strongly_typed)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
