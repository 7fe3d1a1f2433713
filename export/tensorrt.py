"""TensorRT engines for ``flow_decoder.onnx`` and ``vocoder.onnx`` (GPU deployments).

    python -m export.tensorrt --model flow_decoder --onnx flow_decoder.onnx --out-dir plans/ --precision fp16
    python -m export.tensorrt --model vocoder --onnx vocoder.onnx --out-dir plans/ --precision bf16 --trtexec

One ``ShapeSpec`` (batch, target ids, prompt ids, prompt frames as min/opt/max) gives the optimization profile of
both graphs: every input's min/opt/max shape is its shape template evaluated at the spec's min/opt/max point (all
templates grow with the dims, so the boxes are consistent: e.g. the flow's ``noise`` width is prompt frames +
mel_frames(ids), the vocoder's ``mel`` length mel_frames(ids)). ``--precision`` picks FP32, FP16 or BF16 builder
flags (layers TensorRT cannot run in reduced precision stay FP32). Engines are named
``<model>.sm<CC>.trt<version>.<precision>.plan`` because a plan only loads on the GPU architecture and TensorRT
version that built it.

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


def _templates(model: str, config: DecoderConfig) -> dict[str, Callable[[dict[str, int]], Shape]]:
    mels, spk = config.flow.output_size, config.flow.spk_embed_dim
    harmonics, hop = config.hift.n_harmonic_channels, config.hift.samples_per_frame

    def frames(d: dict[str, int]) -> int:
        return config.flow.mel_frames_for_tokens(d["tokens"])

    if model == "flow_decoder":
        return {
            "tokens": lambda d: (d["batch"], d["tokens"]),
            "token_lens": lambda d: (d["batch"],),
            "prompt_tokens": lambda d: (d["batch"], d["prompt_tokens"]),
            "prompt_token_lens": lambda d: (d["batch"],),
            "prompt_mel": lambda d: (d["batch"], d["prompt_frames"], mels),
            "prompt_mel_lens": lambda d: (d["batch"],),
            "speaker_embedding": lambda d: (d["batch"], spk),
            "noise": lambda d: (d["batch"], mels, d["prompt_frames"] + frames(d)),
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
    templates = _templates(model, config or DecoderConfig())
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


def trtexec_command(onnx_path: Path, engine_path: Path, shapes: Profile, precision: str, workspace_mib: int = 8192):
    """The ``trtexec`` argv that builds ``engine_path`` with the same profile and precision as ``build_engine``."""
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
    if precision != "fp32":
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


def build_engine(onnx_path: Path, engine_path: Path, shapes: Profile, precision: str, workspace_mib: int = 8192) -> Path:
    """Build and save a serialized engine with the ``tensorrt`` Python API."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = ""
        if "MultiHeadAttention" in errors:
            hint = " (ONNX Runtime's fused attention: export the flow with `python -m export.flow_onnx --portable`)"
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}{hint}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--decoder-dir", type=Path, help="read dims from its cosyvoice.yaml (default: published)")
    parser.add_argument("--trtexec", action="store_true", help="build with the trtexec command line")
    parser.add_argument("--print-command", action="store_true", help="print the trtexec command and exit")
    parser.add_argument("--workspace-mib", type=int, default=8192)
    for name, default in (("batch", ShapeSpec.batch), ("tokens", ShapeSpec.tokens)):
        parser.add_argument(f"--{name}", type=int, nargs=3, default=default, metavar=("MIN", "OPT", "MAX"))
    parser.add_argument("--prompt-tokens", type=int, nargs=3, default=ShapeSpec.prompt_tokens)
    parser.add_argument("--prompt-frames", type=int, nargs=3, default=ShapeSpec.prompt_frames)
    args = parser.parse_args(argv)
    try:
        config = DecoderConfig.from_yaml(args.decoder_dir / layout.DECODER_YAML) if args.decoder_dir else DecoderConfig()
        spec = ShapeSpec(*(tuple(getattr(args, n)) for n in ("batch", "tokens", "prompt_tokens", "prompt_frames")))
        shapes = profile(args.model, spec, config)
        if args.print_command:
            print(" ".join(trtexec_command(args.onnx, args.out_dir / f"{args.model}.plan", shapes, args.precision)))
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
            command = trtexec_command(args.onnx, engine, shapes, args.precision, args.workspace_mib)
            subprocess.run(command, check=True)
        else:
            build_engine(args.onnx, engine, shapes, args.precision, args.workspace_mib)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
