"""The GPU deployment plan: what every model instance places on every GPU, computed and checked at render time.

    python -m export.render_repository --checkpoints /models --out /repo --gpus 8x80GB   # or --gpus auto (nvidia-smi)

From the checkpoints' own configs (Step1 ``config.json``: hidden size, layers, KV groups, vocabulary, max length;
``cosyvoice.yaml`` and the decoder weight files), the render values and a GPU inventory, ``plan`` lays out per GPU:

- a native ``KIND_GPU`` Python model (``tts_llm``, ``chat_llm`` on the native engine): one stub process per GPU with
  its CUDA context, the weights, the KV cache at the configured length × batch and the decode workspace;
- a vLLM engine: its ``gpu_memory_utilization`` share of each GPU it spans (vLLM takes that share whole for weights,
  activations and KV cache, and refuses to start when less is free); chat spans the first ``tensor_parallel_size``
  GPUs as one ``KIND_MODEL`` instance;
- each ONNX decoder instance (``decoder_gpu_instances`` per GPU and decoder model) in the server process: weights
  plus the workspace of a full batch at the served caps; the server's own CUDA context once per GPU;
- a heal's second copy: a reload starts the new instance before the old one stops, so each GPU keeps room for the
  largest native Python instance on it a second time (vLLM engines cannot be doubled: docs/gpu.md).

Defaults that fit, for values the operator did not ``--set``: chat on vLLM with the smallest tensor-parallel size
whose share fits, TTS on the native engine, and each vLLM engine's memory share computed so that everything on a GPU
adds up to at most ``1 - MARGIN``. A render that cannot fit raises ``PlacementError`` naming the model, the GPU and
the bytes. The estimates are on paper (no GPU has run them): docs/gpu.md says what each constant stands for.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stepaudio.checkpoints import layout
from stepaudio.decoder.config import DecoderConfig

GIB = 1 << 30
MIB = 1 << 20
# One CUDA context (+ cuBLAS/cuDNN handles and workspaces) per process per GPU it touches.
CUDA_CONTEXT_BYTES = 1 * GIB
# vLLM's own use inside its share beyond weights and KV cache: activations of a max-length prefill, CUDA graphs,
# sampler buffers; its profiler measures this at start, the plan reserves it.
VLLM_OVERHEAD_BYTES = 4 * GIB
# Live activation tensors of the decoders' widest layer during one run (ORT keeps inputs and outputs of the nodes in
# flight; fused attention keeps scores out of memory: com.microsoft.MultiHeadAttention's memory-efficient kernel).
DECODER_LIVE_TENSORS = 4
MARGIN = 0.05  # of each GPU left free: allocator fragmentation, NCCL buffers, the driver's own
DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2, "float32": 4, "fp32": 4, "float": 4}
CHAT_MODELS = ("chat_llm", "voice_chat", "voice_chat_stream", "chat_reply", "ensemble_chat", "realtime_session")
DECODER_MODELS = ("flow_decoder", "vocoder", "flow_decoder_music", "vocoder_music")
PLAN_FILE = ".placement.txt"  # suffix of the file written next to the repository (not inside: Triton scans it)


class PlacementError(ValueError):
    pass


@dataclass(frozen=True)
class Gpu:
    index: int
    memory_bytes: int

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.memory_bytes / GIB:.0f} GiB)"


_INVENTORY_ITEM = re.compile(r"(?:(\d+)\s*[x×]\s*)?(\d+(?:\.\d+)?)\s*(GB|GiB|G|MiB|MB)?", re.I)


def parse_inventory(text: str) -> list[Gpu]:
    """``8x80GB``, ``1x24GB``, ``4x80GB,4x141GB`` → GPUs. GB means GiB (what ``nvidia-smi`` reports, over 1024³)."""
    gpus: list[Gpu] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _INVENTORY_ITEM.fullmatch(item)
        if not match:
            raise PlacementError(f"cannot read GPU inventory item {item!r}; expected e.g. 8x80GB")
        count, size, unit = int(match.group(1) or 1), float(match.group(2)), (match.group(3) or "GB").lower()
        per_gpu = int(size * (MIB if unit in ("mib", "mb") else GIB))
        if count < 1 or count > 64 or per_gpu < GIB:
            raise PlacementError(f"GPU inventory item {item!r}: 1..64 GPUs of at least 1 GiB each")
        gpus += [Gpu(len(gpus) + i, per_gpu) for i in range(count)]
    if not gpus:
        raise PlacementError("empty GPU inventory")
    return gpus


def detect_inventory() -> list[Gpu] | None:
    """The visible GPUs from ``nvidia-smi`` (None where it is absent or fails: a CPU machine)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    sizes = [int(float(line)) for line in output.split() if line.strip()]
    return [Gpu(i, mib * MIB) for i, mib in enumerate(sizes)] or None


@dataclass(frozen=True)
class LLMShape:
    """A Step1 checkpoint's size from its ``config.json``."""

    name: str
    hidden: int
    intermediate: int
    heads: int
    groups: int
    layers: int
    vocab: int
    max_seq_len: int

    @classmethod
    def from_config(cls, name: str, path: Path) -> LLMShape:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            shape = cls(name, *(int(raw[key]) for key in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                          "num_attention_groups", "num_hidden_layers", "vocab_size",
                                                          "max_seq_len")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PlacementError(f"{path}: not a readable Step1 config.json ({exc})") from None
        if min(asdict(shape)[k] for k in ("hidden", "heads", "groups", "layers")) < 1 or shape.hidden % shape.heads:
            raise PlacementError(f"{path}: inconsistent Step1 dimensions")
        return shape

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def parameters(self) -> int:
        """Untied embeddings and lm_head; per layer q/o (hidden²), k/v (hidden × groups·head_dim), gated MLP, norms."""
        kv = self.groups * self.head_dim
        per_layer = 2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate
        return 2 * self.vocab * self.hidden + self.layers * (per_layer + 2 * self.hidden) + self.hidden

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.parameters * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.groups * self.head_dim * dtype_bytes

    def workspace_bytes(self, max_len: int, batch: int, dtype_bytes: int) -> int:
        """A max-length prefill's widest activations and float32 logits of a decode step (and their sampling copy)."""
        return max_len * (2 * self.intermediate + 4 * self.hidden) * dtype_bytes + 2 * batch * self.vocab * 4


def decoder_weight_bytes(decoder_dir: Path) -> dict[str, int]:
    """Float32 weights of the flow and the vocoder: their checkpoint files' sizes."""
    sizes = {}
    for model, name in (("flow_decoder", layout.FLOW_WEIGHTS), ("vocoder", layout.HIFT_WEIGHTS)):
        path = Path(decoder_dir) / name
        sizes[model] = path.stat().st_size if path.is_file() else 0
    return sizes


def decoder_workspace_bytes(config: DecoderConfig, batch: int, max_tokens: int, max_frames: int) -> dict[str, int]:
    """Float32 activations of a full batch at the served caps: the flow's widest layer (estimator channels or
    attention width, ×2 for classifier-free guidance; the encoder over the ids) and the vocoder's widest upsampling
    stage (channels × samples)."""
    est, enc = config.flow.estimator, config.flow.encoder
    width = max(est.in_channels, *est.channels, est.num_heads * est.attention_head_dim)
    flow = DECODER_LIVE_TENSORS * 4 * batch * (2 * max_frames * width + max_tokens * max(enc.output_size, enc.linear_units))
    hift, length, channels, widest = config.hift, max_frames, config.hift.base_channels, 0
    for rate in hift.upsample_rates:
        length, channels = length * rate, channels // 2
        widest = max(widest, length * channels)
    vocoder = DECODER_LIVE_TENSORS * 4 * batch * max(widest, max_frames * hift.base_channels)
    return {"flow_decoder": flow, "vocoder": vocoder}


@dataclass
class Placement:
    model: str
    gpu: int
    what: dict[str, int]  # component → bytes

    @property
    def total(self) -> int:
        return sum(self.what.values())


@dataclass
class Plan:
    gpus: list[Gpu]
    placements: list[Placement] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # GPU config values the plan chose
    notes: list[str] = field(default_factory=list)

    def on(self, gpu: int) -> list[Placement]:
        return [p for p in self.placements if p.gpu == gpu]

    def used(self, gpu: int) -> int:
        return sum(p.total for p in self.on(gpu))

    def table(self) -> str:
        lines = [f"{'GPU':<4} {'model':<22} {'GiB':>8}  what"]
        for gpu in self.gpus:
            for p in self.on(gpu.index):
                parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in p.what.items() if v)
                lines.append(f"{gpu.index:<4} {p.model:<22} {p.total / GIB:>8.2f}  {parts}")
            lines.append(f"{gpu.index:<4} {'= used / capacity':<22} {self.used(gpu.index) / GIB:>8.2f}  "
                         f"of {gpu.memory_bytes / GIB:.2f} GiB (limit {(1 - MARGIN) * 100:.0f} %)")
        lines += [f"value {k}={v}" for k, v in sorted(self.values.items())] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"gpus": [asdict(g) for g in self.gpus], "values": self.values, "notes": self.notes,
                "placements": [asdict(p) for p in self.placements]}


def _int(values: dict[str, str], key: str) -> int:
    try:
        return int(values[key])
    except (KeyError, ValueError):
        raise PlacementError(f"render value {key}={values.get(key)!r} is not a whole number") from None


def _parallel_sizes(shape: LLMShape, gpus: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for ``shape`` (heads and KV groups split evenly), smallest first."""
    return [tp for tp in range(1, gpus + 1) if shape.heads % tp == 0 and (shape.groups % tp == 0 or tp % shape.groups == 0)]


def _vllm_need(shape: LLMShape, tp: int, max_len: int, batch: int, dtype_bytes: int) -> int:
    """Bytes one vLLM worker needs on each of its ``tp`` GPUs: its weight shard, its KV share for ``batch`` streams of
    ``max_len`` (KV groups split over the ranks; replicated when there are more ranks than groups), overhead."""
    kv_ranks = min(tp, shape.groups)
    kv = shape.kv_bytes_per_token(dtype_bytes) * max_len * batch // kv_ranks
    return shape.weight_bytes(dtype_bytes) // tp + kv + VLLM_OVERHEAD_BYTES + CUDA_CONTEXT_BYTES


# What the plan may choose, least change first, for keys the operator did not --set: shorter model lengths (8192
# still holds the longest TTS request: 4096 ids + a 30 s prompt's 1250 ids + 1000 characters of text), then fewer
# and smaller decoder batches on the GPU (a full batch at the caps is the decoders' largest workspace).
CHOSEN_MODEL_LENGTHS = ("", "16384", "8192")
CHOSEN_DECODER_BATCHES = (("2", "8"), ("1", "8"), ("1", "4"), ("1", "2"))  # (decoder_gpu_instances, max batch)


def plan(checkpoints: Path, values: dict[str, str], gpus: list[Gpu], models: list[str], explicit: set[str]) -> Plan:
    """Place ``models`` (served names) on ``gpus`` with the render ``values``; keys in ``explicit`` were ``--set``
    by the operator and are kept, the others may be chosen by the plan (``Plan.values``): the chat engine, its
    tensor-parallel size and memory share and, where the defaults do not fit, a shorter ``llm_max_model_len``
    (chat's context cap lowered to match) and fewer / smaller decoder batches. Raises ``PlacementError`` for the
    defaults when nothing fits."""
    lengths = [values.get("llm_max_model_len", "")] if "llm_max_model_len" in explicit else CHOSEN_MODEL_LENGTHS
    batches = [(values["decoder_gpu_instances"], values["decoder_max_batch_size"])]
    if not {"decoder_gpu_instances", "decoder_max_batch_size"} & explicit:
        batches = CHOSEN_DECODER_BATCHES
    first: PlacementError | None = None
    for instances, decoder_batch in batches:
        for length in lengths:
            chosen = {"decoder_gpu_instances": instances, "decoder_max_batch_size": decoder_batch,
                      "llm_max_model_len": length}
            if length and "chat_llm" in models and "chat_max_context_tokens" not in explicit:
                room = int(length) - _int(values, "chat_max_new_tokens_limit")
                chosen["chat_max_context_tokens"] = str(min(_int(values, "chat_max_context_tokens"), room))
            try:
                result = _plan_at(checkpoints, values | chosen, gpus, models, explicit)
            except PlacementError as exc:
                first = first or exc
                continue
            result.values |= {k: v for k, v in chosen.items() if v != values.get(k)}
            if first is not None:
                result.notes.append(f"the defaults do not fit ({first}); the plan chose the values above")
            return result
    raise first


def _plan_at(checkpoints: Path, values: dict[str, str], gpus: list[Gpu], models: list[str], explicit: set[str]) -> Plan:
    checkpoints, result = Path(checkpoints), Plan(gpus)
    dtype = values.get("llm_gpu_dtype", "bfloat16")
    if dtype not in DTYPE_BYTES:
        raise PlacementError(f"llm_gpu_dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    llm_bytes, batch = DTYPE_BYTES[dtype], _int(values, "llm_max_batch_size")

    if "chat_llm" in models and "llm_max_model_len" in explicit:
        context = _int(values, "chat_max_context_tokens")
        if context >= _int(values, "llm_max_model_len"):
            raise PlacementError(f"chat_max_context_tokens={context} leaves no room to generate within "
                                 f"llm_max_model_len={values['llm_max_model_len']}: set it lower")

    def max_len(shape: LLMShape) -> int:
        configured = values.get("llm_max_model_len", "")
        return min(int(configured), shape.max_seq_len) if configured.strip() else shape.max_seq_len

    def native(model: str, shape: LLMShape) -> dict[str, int]:
        length = max_len(shape)
        return {"weights": shape.weight_bytes(llm_bytes),
                "kv_cache": shape.kv_bytes_per_token(llm_bytes) * length * batch,
                "workspace": shape.workspace_bytes(length, batch, llm_bytes), "cuda_context": CUDA_CONTEXT_BYTES}

    # Per-GPU fixed placements first: the server's context, the decoders, native TTS; vLLM shares are sized last.
    decoders = [m for m in DECODER_MODELS if m in models]
    instances = _int(values, "decoder_gpu_instances")
    decoder_batch = _int(values, "decoder_max_batch_size")
    max_tokens, max_frames = _int(values, "decoder_max_tokens"), _int(values, "decoder_max_mel_frames")
    per_decoder: dict[str, dict[str, int]] = {}
    for model in decoders:
        decoder_dir = Path(values["music_decoder_dir" if model.endswith("_music") else "speech_decoder_dir"])
        yaml = decoder_dir / layout.DECODER_YAML
        config = DecoderConfig.from_yaml(yaml) if yaml.is_file() else DecoderConfig()  # absent: published dims
        kind = model.removesuffix("_music")
        weights = decoder_weight_bytes(decoder_dir)[kind]
        work = decoder_workspace_bytes(config, decoder_batch, max_tokens, max_frames)[kind]
        per_decoder[model] = {"weights": weights * instances, "workspace": work * instances}

    tts = LLMShape.from_config("tts_llm", checkpoints / layout.TTS_DIR / layout.LLM_CONFIG) if "tts_llm" in models else None
    chat = LLMShape.from_config("chat_llm", checkpoints / layout.CHAT_DIR / layout.LLM_CONFIG) if "chat_llm" in models else None
    tts_engine = values.get("tts_llm_engine", "native")
    for gpu in gpus:
        if decoders:
            result.placements.append(Placement("tritonserver", gpu.index, {"cuda_context": CUDA_CONTEXT_BYTES}))
        for model in decoders:
            result.placements.append(Placement(f"{model} x{instances}", gpu.index, dict(per_decoder[model])))
        if tts is not None and tts_engine == "native":
            result.placements.append(Placement("tts_llm", gpu.index, native("tts_llm", tts)))

    def heal_reserve(gpu: Gpu) -> int:
        doubled = [p.total for p in result.on(gpu.index) if p.model in ("tts_llm", "chat_llm") and "kv_cache" in p.what]
        return max(doubled, default=0)

    def free(gpu: Gpu) -> int:
        return int(gpu.memory_bytes * (1 - MARGIN)) - result.used(gpu.index) - heal_reserve(gpu)

    def refuse(model: str, gpu: Gpu, need: int, detail: str = "") -> PlacementError:
        return PlacementError(
            f"{model} does not fit on {gpu.label}: it needs {need / GIB:.2f} GiB ({need} bytes) where "
            f"{max(free(gpu), 0) / GIB:.2f} GiB are left after {result.used(gpu.index) / GIB:.2f} GiB of other "
            f"models and the heal reserve {heal_reserve(gpu) / GIB:.2f} GiB{detail}")

    # Chat: native on every GPU (what KIND_GPU does) only when the operator asks; otherwise vLLM over the fewest GPUs.
    chat_engine = values.get("chat_llm_engine", "native") if "chat_llm_engine" in explicit else "vllm"
    if chat is not None and chat_engine == "native":
        if values.get("chat_llm_instance_kind", "KIND_GPU") != "KIND_GPU":
            raise PlacementError("chat_llm on the native engine runs as KIND_GPU instances (one device each)")
        for gpu in gpus:
            result.placements.append(Placement("chat_llm", gpu.index, native("chat_llm", chat)))
    # Shares are fixed fractions of each GPU: a vLLM engine gets what is left on its GPUs, minus what the other vLLM
    # engine there needs.
    tts_need = _vllm_need(tts, 1, max_len(tts), batch, llm_bytes) if tts is not None and tts_engine == "vllm" else 0
    if chat is not None and chat_engine == "vllm":
        chat_len = max_len(chat)
        if "chat_llm_tensor_parallel_size" in explicit:
            sizes = [_int(values, "chat_llm_tensor_parallel_size")]
            if sizes[0] not in _parallel_sizes(chat, max(sizes[0], 1)) or sizes[0] > len(gpus):
                raise PlacementError(f"chat_llm_tensor_parallel_size={sizes[0]}: needs a divisor of {chat.heads} "
                                     f"heads and at most the {len(gpus)} GPU(s) of the inventory")
        else:
            sizes = _parallel_sizes(chat, len(gpus))
        for tp in sizes:
            need = _vllm_need(chat, tp, chat_len, batch, llm_bytes)
            if all(free(gpu) - tts_need >= need for gpu in gpus[:tp]):
                break
        else:
            tp = sizes[-1]
            gpu = min(gpus[:tp], key=free)
            raise refuse("chat_llm", gpu, need + tts_need,
                         f" (vLLM, tensor parallel {tp}, {chat_len} tokens x {batch} streams; "
                         f"set llm_max_model_len / llm_max_batch_size lower or add GPUs)")
        share = min(free(gpu) - tts_need for gpu in gpus[:tp])
        fraction = _floor(share / min(g.memory_bytes for g in gpus[:tp]))
        for gpu in gpus[:tp]:
            result.placements.append(Placement("chat_llm (vLLM)", gpu.index, {"share": int(fraction * gpu.memory_bytes)}))
        result.notes.append(
            f"chat_llm: vLLM tensor parallel {tp} on GPUs 0-{tp - 1}, gpu_memory_utilization {fraction:.3f}; needs "
            f"{need / GIB:.2f} GiB per GPU (weights {chat.weight_bytes(llm_bytes) / tp / GIB:.2f}, KV {chat_len} x "
            f"{batch}); a heal must unload it before loading it again")
        result.values |= {"chat_llm_engine": "vllm", "chat_llm_instance_kind": "KIND_MODEL",
                          "chat_llm_tensor_parallel_size": str(tp), "chat_llm_gpu_memory_utilization": f"{fraction:.3f}"}
    if tts_need:
        worst = min(gpus, key=free)
        if free(worst) < tts_need:
            raise refuse("tts_llm", worst, tts_need, " (vLLM, one GPU per instance)")
        fraction = _floor(min(free(g) for g in gpus) / min(g.memory_bytes for g in gpus))
        for gpu in gpus:
            result.placements.append(Placement("tts_llm (vLLM)", gpu.index, {"share": int(fraction * gpu.memory_bytes)}))
        result.values["tts_llm_gpu_memory_utilization"] = f"{fraction:.3f}"
        result.notes.append("tts_llm: vLLM on every GPU; a heal must unload it before loading it again")
    for gpu in gpus:
        if free(gpu) < 0:
            biggest = max(result.on(gpu.index), key=lambda p: p.total)
            raise PlacementError(
                f"{biggest.model} does not fit on {gpu.label}: the GPU's models need "
                f"{(result.used(gpu.index) + heal_reserve(gpu)) / GIB:.2f} GiB "
                f"({result.used(gpu.index) + heal_reserve(gpu)} bytes, heal reserve included) of "
                f"{gpu.memory_bytes * (1 - MARGIN) / GIB:.2f} GiB usable; {biggest.model} alone "
                f"{biggest.total / GIB:.2f} GiB")
        if heal_reserve(gpu):
            result.placements.append(Placement("heal reserve", gpu.index, {"second_copy": heal_reserve(gpu)}))
    return result


def _floor(fraction: float) -> float:
    """Three decimals, rounded down (the share rendered must not exceed what was checked)."""
    return int(fraction * 1000) / 1000


def write_plan(result: Plan, out: Path) -> Path:
    """``<out>.placement.txt`` (the table) and ``<out>.placement.json`` next to the repository."""
    out = Path(out)
    text_path = out.parent / (out.name + PLAN_FILE)
    text_path.write_text(result.table())
    text_path.with_suffix(".json").write_text(json.dumps(result.to_json(), indent=1))
    return text_path


def inventory(spec: str) -> list[Gpu] | None:
    """``--gpus``: an inventory (``8x80GB``), ``auto`` (nvidia-smi's GPUs, None without it) or ``none``."""
    if spec.strip().lower() == "none":
        return None
    if spec.strip().lower() == "auto":
        return detect_inventory()
    return parse_inventory(spec)


def absent_optional_models(checkpoints: Path) -> set[str]:
    """Served models left out because their optional checkpoint is absent: chat (and what needs it) without
    ``Step-Audio-Chat/config.json``."""
    return set() if (Path(checkpoints) / layout.CHAT_DIR / layout.LLM_CONFIG).is_file() else set(CHAT_MODELS)


def gpu_config_values(result: Plan) -> dict[str, str]:
    """The plan's choices as render values of the GPU configs (chat's share under its per-engine key)."""
    return dict(result.values)
