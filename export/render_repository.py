"""Render a deployable Triton model repository from ``model_repository/`` templates and a checkpoint tree.

    python -m export.render_repository --checkpoints DIR --out build/model_repository [--voices DIR] [--set k=v ...]

What it does, in one pass:
1. copies each served model's template folder (``config.pbtxt``, ``1/model.py``) under its served name; a template
   can be served under several names with other values (``flow_decoder`` → ``flow_decoder_music`` with the music
   decoder's weights);
2. writes the model's configs from its template: ``config.pbtxt`` for GPU production and, for a template with lines
   that start ``@gpu `` / ``@cpu `` (a line of that variant only), ``configs/cpu.pbtxt`` for the CPU server; fills
   every ``${name}`` placeholder (``fill_template.py`` syntax) from the checkpoint paths, the deployment values
   (``DEFAULTS`` overridden by ``--set``), the model's own values and its tensors (``${inputs}``, ``${outputs}``,
   ``${sampling_input_map}`` from ``stepaudio_contract/specs.py``);
3. exports the ONNX files the ONNX models serve (flow decoder and vocoder of each decoder folder); exports of one
   exporter run in one worker process that traces each architecture once (the music decoder reuses the speech
   decoder's trace with its own weights), third-party exporter output goes to ``--log``;
4. fails if any placeholder is left unfilled, naming the file and the placeholders.

Rendering is cached: ``<out>.render-digest`` next to the repository holds a digest of everything that shapes the
tree (values, templates, the library and exporter code, the content of every checkpoint folder an export reads,
package versions); an unchanged digest returns the tree as it is. Each exported version folder keeps the digest of its own inputs
(``1/.build-digest``), so changing a value re-fills the configs but re-exports nothing.

The same rendered repository loads in an NGC Triton GPU container (``config.pbtxt``) and on the CPU server
(``--model-config-name=cpu``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from export import placement
from stepaudio.checkpoints import layout
from stepaudio.tts.limits import MAX_PROMPT_SECONDS, MAX_TEXT_CHARS
from stepaudio_contract import compat, specs
from stepaudio_contract.limits import REALTIME_MAX_CHUNK_SECONDS
from stepaudio_server.files import templates_dir

ROOT = Path(__file__).resolve().parent.parent
# The checkout's model_repository/, or the copy an installed wheel carries (stepaudio_server/files.py).
TEMPLATES = templates_dir()
# Code whose change can change a rendered tree (re-fill every config) and, narrower, an exported graph (re-export):
# the exporters and the library parts they trace (tests/export/test_render_cache.py checks that list).
CODE_DIRS = (ROOT / "export", ROOT / "stepaudio", ROOT / "stepaudio_contract")
EXPORT_CODE = (ROOT / "export", ROOT / "stepaudio" / "__init__.py", *(ROOT / "stepaudio" / part for part in
               ("audio", "checkpoints", "decoder", "tokenizer")))
EXPORT_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime")
RENDER_DIGEST = ".render-digest"  # suffix of the file next to the repository (Triton scans everything inside)
BUILD_DIGEST = ".build-digest"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Config file per server variant; a template line starting "@gpu " / "@cpu " belongs to that variant's file only.
VARIANT_FILES = {"gpu": "config.pbtxt", "cpu": "configs/cpu.pbtxt"}
_VARIANT_LINE = re.compile(r"@(gpu|cpu) ")

# Deployment values a profile may override with --set key=value.
DEFAULTS: dict[str, str] = {
    "llm_max_batch_size": "8",  # running streams per LLM step (continuous batching)
    "llm_gpu_dtype": "bfloat16",
    # Generation engine per LLM model (stepaudio/llm/engine_config.py): native (one device) | vllm.
    "tts_llm_engine": "native",
    "chat_llm_engine": "native",
    "chat_llm_tensor_parallel_size": "1",  # vllm only: GPUs one chat_llm instance spans (heads 96 must divide)
    "chat_llm_pipeline_parallel_size": "1",  # vllm only: > 1 splits the layers across nodes (Ray)
    # vllm only: how the engine starts its workers, mp (processes, one node) | ray (multi-node); empty: vLLM decides.
    "chat_llm_distributed_executor_backend": "",
    "chat_llm_instance_kind": "KIND_GPU",  # KIND_MODEL for vllm: one instance owns all its GPUs
    "llm_max_model_len": "",  # empty: the checkpoint's max_seq_len (32768)
    "llm_gpu_memory_utilization": "0.9",  # vllm only: share of each GPU for weights + KV cache
    # Per engine (empty: llm_gpu_memory_utilization); a GPU plan (--gpus) sizes them so engines sharing a GPU add up.
    "tts_llm_gpu_memory_utilization": "",
    "chat_llm_gpu_memory_utilization": "",
    "decoder_max_batch_size": "8",
    # GPU decoders: onnxruntime_onnx (the exported graphs) | tensorrt_plan (plans from export/tensorrt.py found in the
    # tensorrt_plans folder, one per GPU architecture, copied in and named in cc_model_filenames).
    "decoder_gpu_platform": "onnxruntime_onnx",
    "tensorrt_plans": "",
    # Threads of one flow_decoder / vocoder execution on the CPU server (ORT intra-op, or torch for the bf16 flow).
    # 1 leaves the other cores to the LLM and orchestration stubs; on a box with cores to spare for the decoders a
    # single request's token2wav latency falls almost in proportion (docs/performance.md: 2 threads in-process).
    "decoder_cpu_threads": "1",
    "batch_queue_delay_us": "20000",
    # flow_decoder / vocoder (and the music pair): 0 = "batch what is queued". Their one instance is busy under load,
    # so calls that arrive meanwhile wait anyway and run as one batch; an idle decoder starts a call at once instead
    # of holding a stream's first chunk for the delay (each chunk makes one call to each: 2 waits per chunk).
    # bench/bench_tts_stream.py measures both settings (docs/performance.md).
    "decoder_queue_delay_us": "0",
    "decoder_gpu_instances": "2",
    # Work per request a served flow_decoder / vocoder accepts (CPU backend's feed validator): a default tts request
    # (4096 generated ids) with a 30 s voice prompt (1250 ids, 2584 mel frames) needs 5346 ids and 11050 frames.
    "decoder_max_tokens": "5400",
    "decoder_max_mel_frames": "11100",
    # CPU server's flow_decoder(_music): float32 runs the exported ONNX graph on ORT; bfloat16 runs the library's
    # PyTorch flow in bf16 instead (ORT's CPU EP has no bf16 MatMul), as the reference publishes its flow: fast only on
    # CPUs with AMX, ~3 % mel error (docs/decoder-contract.md, docs/performance.md). "auto" (the default) picks
    # bfloat16 where the rendering CPU has AMX bf16 units, float32 elsewhere. The GPU config ignores it.
    "decoder_flow_dtype": "auto",
    "tokenizer_max_batch_size": "8",
    "max_text_chars": str(MAX_TEXT_CHARS),
    "chat_max_context_tokens": "30000",
    "default_speaker": "Tingting",
    "max_sentence_chars": "200",
    "max_prompt_seconds": f"{MAX_PROMPT_SECONDS:g}",
    "voice_cache_entries": "256",
    "stream_first_chunk_tokens": "25",
    "stream_chunk_growth": "2.0",
    "stream_max_chunk_tokens": "200",
    # Deadline cut (stepaudio/tts/streaming.py): once a stream's unplayed audio falls to its last chunk's decode time
    # + the margin, the next chunk is cut from the ids it has (≥ min tokens, and ≥ the tokens whose audio outlasts
    # that decode) instead of waiting for the schedule's size. Off by default: chunk boundaries by the schedule alone
    # (timing-independent). Measured (README, continuity): with stream_first_chunk_tokens=45 and a 250 ms margin, 0
    # underruns at 4 streams in two runs but 4 of 8 streams in a third, for a later first chunk; with the default
    # 25-id first chunk it makes underruns worse.
    "stream_deadline_cut": "false",
    "stream_deadline_margin_ms": "250",
    "stream_deadline_min_chunk_tokens": "10",
    # Work per request (docs/hardening.md): generated ids, audio in, concurrent streams per model.
    "tts_max_new_tokens": "4096",  # ≈ 98 s of speech; a request may ask for fewer, never more
    "chat_max_new_tokens_limit": "4096",
    "max_audio_seconds": "60",
    "llm_max_streams": "128",  # running + queued generations per LLM model; more → UNAVAILABLE
    "stream_max_concurrent": "64",  # tts_stream / voice_chat_stream requests in flight per instance
    # A BLS stream that sends nothing for this long is abandoned with UNAVAILABLE (a called stub died; Triton never
    # ends such a stream: stepaudio_contract/compat.py, stalled_bls_streams).
    "bls_stall_timeout_s": "60",
    # The Triton server version the repository is for; its workarounds (stepaudio_contract/compat.py) are declared
    # in the configs only where that version needs them. Empty: the installed server's, else compat.DEFAULT_VERSION.
    "triton_version": "",
    # Real-time sessions (vad, stream_tokenizer, realtime_session; docs/realtime.md).
    "realtime_max_sessions": "128",  # live sessions per model instance; more → UNAVAILABLE
    "realtime_idle_timeout_s": "30",  # a session without audio this long is freed (Triton's sequence idle too)
    # A session that sent nothing this long answers its next chunk with an empty response, so that a client's
    # stall timeout (the gateway's: 120 s) tells a quiet session (the user streams silence) from a dead one.
    "realtime_keepalive_s": "10",
    "realtime_max_session_seconds": "1800",
    "realtime_max_chunk_seconds": f"{REALTIME_MAX_CHUNK_SECONDS:g}",  # audio per request: clients send it as it arrives
    "stream_vq06_segment_seconds": "30",  # the reference's segment: ids equal one-shot tokenization's
    "realtime_end_of_turn_ms": "600",  # silence that ends a user turn
    "realtime_pause_ms": "200",  # silence that starts a speculative reply
    "realtime_speculation": "true",  # sessions may turn it off on START
    "realtime_chat_max_new_tokens": "256",  # reply text tokens: cap and default per reply
    "realtime_tts_max_new_tokens": "1024",  # speech ids: cap and default per reply sentence
    "realtime_max_history_turns": "16",  # text turns a session keeps (older ones drop out of the chat context)
}


class RenderError(ValueError):
    pass


@dataclass
class ServedModel:
    name: str
    template: str
    values: dict[str, str] = field(default_factory=dict)
    # Writes the model's artifacts into its version folder (e.g. model.onnx); None for python/ensemble models.
    build: Callable[[Path], None] | None = None


def _export_flow(decoder_dir: Path, version_dir: Path) -> None:
    from export.flow_onnx import export_flow_onnx

    export_flow_onnx(decoder_dir, version_dir / "model.onnx")


def _export_vocoder(decoder_dir: Path, version_dir: Path) -> None:
    from export.vocoder_onnx import export_vocoder_onnx

    export_vocoder_onnx(decoder_dir, version_dir / "model.onnx")


def _export_vq02(tokenizer_dir: Path, version_dir: Path) -> None:
    from export.tokenizer_onnx import export_vq02_encoder

    export_vq02_encoder(tokenizer_dir, version_dir / layout.VQ02_ENCODER_ONNX)


def served_models(checkpoints: Path) -> list[ServedModel]:
    """Every served model: its name, template folder, own values and build step."""
    tts_dir = checkpoints / layout.TTS_DIR
    decoders = [(layout.SPEECH_DECODER_DIR, "speech", ""), (layout.MUSIC_DECODER_DIR, "music", "_music")]
    names = {
        decoder: {"tts_model": f"tts{suffix}", "flow_model": f"flow_decoder{suffix}", "vocoder_model": f"vocoder{suffix}"}
        for _, decoder, suffix in decoders
    }
    # The streaming model calls each decoder's served flow and vocoder models (speech_flow_model, ...).
    stream_values = {f"{decoder}_{key}": name for decoder, own in names.items() for key, name in own.items() if key != "tts_model"}
    models = [
        ServedModel("tokenizer", "tokenizer", build=partial(_export_vq02, checkpoints / layout.TOKENIZER_DIR)),
        ServedModel("tts_frontend", "tts_frontend"),
        ServedModel("tts_llm", "tts_llm"),
        ServedModel("tts_stream", "tts_stream", stream_values),
        ServedModel("chat_llm", "chat_llm"),
        ServedModel("voice_chat", "voice_chat"),
        ServedModel("voice_chat_stream", "voice_chat_stream"),
        ServedModel("chat_reply", "chat_reply"),
        ServedModel("ensemble_chat", "ensemble_chat", {"tokenizer_model": "tokenizer", "chat_reply_model": "chat_reply",
                                                       **names["speech"]}),
        ServedModel("vad", "vad"),
        ServedModel("stream_tokenizer", "stream_tokenizer"),
        ServedModel("realtime_session", "realtime_session"),
    ]
    for decoder_dir_name, decoder, suffix in decoders:
        decoder_dir = tts_dir / decoder_dir_name
        own = names[decoder]
        decoder_values = {"decoder": decoder, "decoder_dir": str(decoder_dir.resolve())} | own
        models += [
            ServedModel(own["tts_model"], "tts", decoder_values),
            ServedModel(own["flow_model"], "flow_decoder", decoder_values, build=partial(_export_flow, decoder_dir)),
            ServedModel(own["vocoder_model"], "vocoder", decoder_values, build=partial(_export_vocoder, decoder_dir)),
            ServedModel(f"ensemble_tts{suffix}", "ensemble_tts", decoder_values),
        ]
    return models


def fill(text: str, values: dict[str, str], where: str) -> str:
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise RenderError(f"{where}: no value for placeholder(s) {', '.join('${' + m + '}' for m in missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


FLOW_DTYPES = ("float32", "bfloat16")  # stepaudio.decoder.torch_session.FLOW_DTYPES (not imported: it loads torch)
FLOW_SESSION_FACTORY = "stepaudio.decoder.torch_session:flow_session"
# CPU flags of bf16 matrix units, any one of which makes the bf16 flow pay (docs/performance.md#precision): Intel AMX
# tiles, or AVX-512 BF16 dot products (AMD Zen 4 and later; a 1120×512×2048 matmul ran 2.1–2.8× the fp32 speed here).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def resolve_flow_dtype(value: str, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """``decoder_flow_dtype`` → (the dtype rendered, why): "auto" follows the CPU that renders."""
    if value != "auto":
        return value, "set by decoder_flow_dtype"
    flags = cpu_flags() if flags is None else flags
    if units := sorted(BF16_CPU_FLAGS & flags):
        return "bfloat16", f"auto: this CPU has bf16 matrix units ({', '.join(units)})"
    return "float32", "auto: this CPU has no bf16 matrix units (amx_bf16 / avx512_bf16)"


def flow_session_parameters(dtype: str) -> str:
    """The CPU flow_decoder's ``${decoder_flow_session}``: nothing for float32 (the backend runs ORT on the exported
    graph, as without the value), for bfloat16 the backend's ``session_factory`` running the PyTorch flow."""
    if dtype not in FLOW_DTYPES:
        raise RenderError(f"decoder_flow_dtype must be one of {['auto', *FLOW_DTYPES]}, got {dtype!r}")
    if dtype == "float32":
        return ""
    return (f'parameters {{ key: "session_factory" value: {{ string_value: "{FLOW_SESSION_FACTORY}" }} }}\n'
            f'parameters {{ key: "flow_dtype" value: {{ string_value: "{dtype}" }} }}')


def base_values(checkpoints: Path, voices: Path | None, overrides: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise RenderError(f"unknown --set key(s) {unknown}; known: {sorted(DEFAULTS)}")
    values = dict(DEFAULTS) | overrides
    if not values["decoder_cpu_threads"].isdigit() or int(values["decoder_cpu_threads"]) < 1:
        raise RenderError(f"decoder_cpu_threads must be a whole number ≥ 1, got {values['decoder_cpu_threads']!r}")
    values["decoder_flow_dtype"], values["decoder_flow_dtype_reason"] = resolve_flow_dtype(values["decoder_flow_dtype"])
    values["decoder_flow_session"] = flow_session_parameters(values["decoder_flow_dtype"])
    values["decoder_gpu_model_files"] = ""  # per decoder model: its plan files (export.tensorrt.attach_plans)
    for engine in ("tts_llm", "chat_llm"):
        values[f"{engine}_gpu_memory_utilization"] = (values[f"{engine}_gpu_memory_utilization"]
                                                      or values["llm_gpu_memory_utilization"])
    values["realtime_idle_timeout_us"] = str(int(float(values["realtime_idle_timeout_s"]) * 1_000_000))
    values["triton_version"] = values["triton_version"] or compat.installed_version() or compat.DEFAULT_VERSION
    try:
        compat.parse_version(values["triton_version"])
    except ValueError as exc:
        raise RenderError(f"triton_version: {exc}") from None
    values |= {
        "tts_checkpoint": str((checkpoints / layout.TTS_DIR).resolve()),
        "chat_checkpoint": str((checkpoints / layout.CHAT_DIR).resolve()),
        "tokenizer_checkpoint": str((checkpoints / layout.TOKENIZER_DIR).resolve()),
        "speech_decoder_dir": str((checkpoints / layout.TTS_DIR / layout.SPEECH_DECODER_DIR).resolve()),
        "music_decoder_dir": str((checkpoints / layout.TTS_DIR / layout.MUSIC_DECODER_DIR).resolve()),
        "voices_dir": str(Path(voices).resolve()) if voices else "",
    }
    return values


def variant_configs(template: str) -> dict[str, str]:
    """A template's config text per variant. A template without variant lines is one config for every server (CPU-only
    orchestration): it renders ``config.pbtxt`` alone, which the CPU server loads too."""
    tagged = [((m := _VARIANT_LINE.match(line)) and m.group(1), line) for line in template.splitlines(keepends=True)]
    variants = list(VARIANT_FILES) if any(tag for tag, _ in tagged) else ["gpu"]
    return {variant: "".join(line[len("@gpu "):] if tag else line for tag, line in tagged if tag in (None, variant))
            for variant in variants}


def tensor_values(template: str, variant: str, triton_version: str = compat.DEFAULT_VERSION) -> dict[str, str]:
    """The placeholders a config's tensors fill, from the template's entry in ``specs.MODELS``; a tensor that
    exists for a workaround (``Tensor.only_for``) only where ``triton_version`` needs it."""
    if template not in specs.MODELS:
        raise RenderError(f"no tensors declared for template {template!r} in stepaudio_contract/specs.py")
    io, features = specs.MODELS[template], compat.TritonFeatures.for_version(triton_version)
    sampling_map = "\n      ".join(f'input_map {{ key: "{t.name}" value: "{t.name}" }}' for t in specs.SAMPLING)
    return {"inputs": specs.pbtxt_block("input", specs.served(io.inputs, features), variant),
            "outputs": specs.pbtxt_block("output", specs.served(io.outputs, features), variant),
            "sampling_input_map": sampling_map}


_TEMPLATE_IGNORE = shutil.ignore_patterns("__pycache__", "*.onnx", "README.md")


def render_model(model: ServedModel, out: Path, values: dict[str, str], keep_built: bool = False,
                 gpu_values: dict[str, str] | None = None) -> Path:
    """Copy and fill one model's folder; its build step (if any) is left to ``render``. ``keep_built`` keeps the
    files an earlier build wrote into the version folder (its inputs did not change); ``gpu_values`` (the GPU
    plan's choices, export/placement.py) apply to the GPU config only."""
    template = TEMPLATES / model.template
    if not template.is_dir():
        raise RenderError(f"no template folder {template}")
    target = out / model.name
    with tempfile.TemporaryDirectory(dir=out.parent) as kept:  # not inside: Triton would take it for a model
        if target.exists():
            if keep_built and (target / "1").is_dir():
                shutil.move(target / "1", Path(kept) / "1")
            shutil.rmtree(target)
        shutil.copytree(template, target, ignore=_TEMPLATE_IGNORE)
        (target / "1").mkdir(exist_ok=True)
        if (Path(kept) / "1").is_dir():
            for built in (Path(kept) / "1").iterdir():
                if not (target / "1" / built.name).exists():  # template files are always fresh
                    shutil.move(built, target / "1" / built.name)
    model_values = values | {"model_name": model.name} | model.values
    for variant, text in variant_configs((template / "config.pbtxt").read_text()).items():
        config = target / VARIANT_FILES[variant]
        config.parent.mkdir(exist_ok=True)
        own = model_values | ((gpu_values or {}) if variant == "gpu" else {})
        own |= tensor_values(model.template, variant, model_values["triton_version"])
        config.write_text(fill(text, own, str(config.relative_to(out))))
    return target  # ensembles get an (empty) version folder too


def _digest_files(digest, paths) -> None:
    """Feed every file under ``paths`` (name relative to its root, then content) into ``digest``, in sorted order."""
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0")
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)


def _code_digest(paths) -> str:
    digest = hashlib.sha256()
    _digest_files(digest, [p for p in paths if p.exists()])
    for package in EXPORT_PACKAGES:
        try:
            digest.update(f"{package}=={importlib.metadata.version(package)}\0".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package} absent\0".encode())
    return digest.hexdigest()


def _build_inputs(build: Callable) -> tuple[str, list[Path]]:
    """(exporter name, checkpoint paths it reads): a build is an exporter bound (``functools.partial``) to paths."""
    func = getattr(build, "func", build)
    args = [*getattr(build, "args", ()), *getattr(build, "keywords", {}).values()]
    return f"{func.__module__}.{func.__qualname__}", [Path(a) for a in args if isinstance(a, (str, Path)) and Path(a).exists()]


def build_digest(build: Callable, code: str) -> str:
    """Digest of what one export reads: the exporter, the content of its checkpoint paths, the code and versions."""
    name, paths = _build_inputs(build)
    digest = hashlib.sha256(f"{name}\0{code}\0".encode())
    _digest_files(digest, paths)
    return digest.hexdigest()


def render_digest(models: list[ServedModel], values: dict[str, str], builds: dict[str, str], code: str) -> str:
    """Digest of a whole rendered tree: the values, each model's name/template/own values and its template files,
    the build digests and the code."""
    digest = hashlib.sha256(json.dumps({"values": values, "builds": builds, "code": code}, sort_keys=True).encode())
    for model in models:
        digest.update(json.dumps([model.name, model.template, model.values], sort_keys=True).encode())
        _digest_files(digest, [TEMPLATES / model.template])
    return digest.hexdigest()


def _run_builds(jobs: list[tuple[Callable, Path]], log_path: str | None) -> None:
    """One worker's exports, in order, sharing traces of equal architectures; their output goes to ``log_path``."""
    if log_path:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)  # file descriptors, so C++ logging (torch's W-lines) lands there too
        os.dup2(log, 2)
    from export import sharing_traces

    with sharing_traces():
        for build, version_dir in jobs:
            build(version_dir)


def _attach_tensorrt_plans(models: list[ServedModel], values: dict[str, str]) -> dict[str, list[Path]]:
    """Under decoder_gpu_platform=tensorrt_plan: each decoder model's plan lines (its own value) and plan files."""
    from export import tensorrt

    files = {}
    for model in models:
        try:
            lines, files[model.name] = tensorrt.attach_plans(model.template, values)
        except ValueError as exc:
            raise RenderError(f"{model.name}: {exc}") from None
        if lines:  # a copy: a decoder's models share one values dict
            model.values = model.values | {"decoder_gpu_model_files": lines}
    return files


def render(
    checkpoints: Path,
    out: Path,
    voices: Path | None = None,
    overrides: dict[str, str] | None = None,
    only: list[str] | None = None,
    log_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
    on_exported: Callable[[int, int], None] | None = None,
    gpus: list | None = None,
) -> list[Path]:
    """Render the repository into ``out`` (reused as it is when its digest is unchanged); ``log_path`` collects the
    exporters' output (None: the terminal), ``progress`` gets a short line per step, ``on_exported(done, total)``
    hears each finished export (the long step: a progress bar). ``gpus`` (``export.placement.Gpu``; None: no plan)
    plans the GPU configs on that inventory: refused when they cannot fit, the plan's choices filled into them and the
    plan written next to the repository. Models of an absent optional checkpoint (chat) are left out unless ``only``
    names them."""
    say = progress or (lambda line: None)
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        raise RenderError(f"checkpoint directory {checkpoints} does not exist")
    values = base_values(checkpoints, voices, overrides or {})
    say(f"CPU flow decoder precision: {values['decoder_flow_dtype']} ({values['decoder_flow_dtype_reason']})")
    workarounds = sorted(compat.TritonFeatures.for_version(values["triton_version"]).needed)
    say(f"Triton {values['triton_version']}: workarounds {', '.join(workarounds)} (stepaudio_contract/compat.py)")
    models = served_models(checkpoints)
    if only:
        unknown = sorted(set(only) - {m.name for m in models})
        if unknown:
            raise RenderError(f"unknown model(s) {unknown}")
        models = [m for m in models if m.name in only]
    else:
        absent = placement.absent_optional_models(checkpoints)
        if absent & {m.name for m in models}:
            say(f"no {layout.CHAT_DIR}/ in {checkpoints}: serving TTS only (left out: {', '.join(sorted(absent))})")
        models = [m for m in models if m.name not in absent]
    plan_files = _attach_tensorrt_plans(models, values)
    gpu_values: dict[str, str] = {}
    if gpus:
        try:
            deployment = placement.plan(checkpoints, values, gpus, [m.name for m in models], set(overrides or {}))
        except placement.PlacementError as exc:  # a RenderError for every caller (the launcher, the CLI)
            raise RenderError(str(exc)) from None
        gpu_values = placement.gpu_config_values(deployment)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if gpus:
        say(deployment.table().rstrip())
        say(f"GPU plan written to {placement.write_plan(deployment, out)}")
    export_code = _code_digest(EXPORT_CODE)
    builds = {m.name: build_digest(m.build, export_code) for m in models if m.build is not None}
    plan_digests = {f"plan:{p}": hashlib.sha256(p.read_bytes()).hexdigest() for ps in plan_files.values() for p in ps}
    digest = render_digest(models, values | {f"gpu:{k}": v for k, v in gpu_values.items()} | plan_digests, builds,
                           _code_digest(CODE_DIRS))
    stamp = out.parent / (out.name + RENDER_DIGEST)
    targets = [out / m.name for m in models]
    if stamp.is_file() and stamp.read_text() == digest and all(t.is_dir() for t in targets):
        say(f"{out}: unchanged (digest {digest[:12]}), reused")
        return targets
    stamp.unlink(missing_ok=True)  # written again only once every step below succeeded

    def built(target: Path, name: str) -> bool:
        recorded = target / "1" / BUILD_DIGEST
        return recorded.is_file() and recorded.read_text() == builds[name]

    fresh = {m.name for m in models if m.build is not None and built(out / m.name, m.name)}
    for model in models:
        render_model(model, out, values, keep_built=model.name in fresh, gpu_values=gpu_values)
        for plan_file in plan_files.get(model.name, []):
            shutil.copy2(plan_file, out / model.name / "1" / plan_file.name)
    say(f"filled {len(models)} model configurations")
    # Exports are single-threaded tracing: one worker process per exporter (fresh processes: no forked torch state),
    # side by side, biggest group first; a worker traces each architecture once.
    groups: dict[str, list[tuple[Callable, Path]]] = {}
    for model in models:
        if model.build is not None and model.name not in fresh:
            groups.setdefault(_build_inputs(model.build)[0], []).append((model.build, out / model.name / "1"))
    jobs = sorted(groups.values(), key=len, reverse=True)
    if jobs:
        started = time.perf_counter()
        names = ", ".join(version.parent.name for job in jobs for _, version in job)
        say(f"exporting {names}" + (f" (exporter output: {log_path})" if log_path else ""))
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_builds, job, str(log_path) if log_path else None): len(job) for job in jobs}
            total, done = sum(futures.values()), 0
            if on_exported is not None:
                on_exported(0, total)  # the bar's clock starts with the exports
            for future in as_completed(futures):
                future.result()
                done += futures[future]
                if on_exported is not None:
                    on_exported(done, total)
        for job in jobs:
            for _, version in job:
                (version / BUILD_DIGEST).write_text(builds[version.parent.name])
        say(f"exported in {time.perf_counter() - started:.1f} s")
    stamp.write_text(digest)
    return targets


def _parse_set(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RenderError(f"--set expects key=value, got {item!r}")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.render_repository", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, required=True, help="folder holding Step-Audio-TTS-3B/ etc.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--voices", type=Path, default=None, help="preset speakers folder (speakers_info.json + wavs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", nargs="*", help="render only these served models")
    parser.add_argument("--log", type=Path, default=None,
                        help="file for the exporters' own output (default: <out>.log next to the repository)")
    parser.add_argument("--gpus", default="auto",
                        help="GPU inventory to plan the GPU configs on, e.g. 8x80GB; auto: nvidia-smi's GPUs (none on "
                             "a machine without it); none: no plan (export/placement.py)")
    args = parser.parse_args(argv)
    log = args.log or args.out.parent / f"{args.out.name}.log"
    try:
        gpus = placement.inventory(args.gpus)
        if gpus is None and args.gpus.strip().lower() == "auto":
            print("no GPU inventory (no nvidia-smi): the GPU configs are not planned; pass --gpus 8x80GB to check "
                  "them for a GPU deployment", file=sys.stderr)
        paths = render(args.checkpoints, args.out, args.voices, _parse_set(args.overrides), args.only, log,
                       progress=lambda line: print(line, file=sys.stderr), gpus=gpus)
    except (RenderError, placement.PlacementError) as exc:  # PlacementError: a malformed --gpus
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
