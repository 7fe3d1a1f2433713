"""Render a deployable Triton model repository from ``model_repository/`` templates and a checkpoint tree.

    python -m export.render_repository --checkpoints DIR --out build/model_repository [--voices DIR] [--set k=v ...]

What it does, in one pass:
1. copies each served model's template folder (``config.pbtxt`` for GPU production, ``configs/cpu.pbtxt`` for the
   CPU server, ``1/model.py``) under its served name; a template can be served under several names with other
   values (``flow_decoder`` → ``flow_decoder_music`` with the music decoder's weights);
2. fills every ``${name}`` placeholder of the configs (``fill_template.py`` syntax) from the checkpoint paths, the
   deployment values (``DEFAULTS`` overridden by ``--set``) and the model's own values;
3. exports the ONNX files the ONNX models serve (flow decoder and vocoder of each decoder folder);
4. fails if any placeholder is left unfilled, naming the file and the placeholders.

The same rendered repository loads in an NGC Triton GPU container (``config.pbtxt``) and on the CPU server
(``--model-config-name=cpu``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from stepaudio.checkpoints import layout

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Deployment values a profile may override with --set key=value.
DEFAULTS: dict[str, str] = {
    "llm_max_batch_size": "8",  # running streams per LLM step (continuous batching)
    "llm_gpu_dtype": "bfloat16",
    # Generation engine per LLM model (stepaudio/llm/engine_config.py): native (one device) | vllm.
    "tts_llm_engine": "native",
    "chat_llm_engine": "native",
    "chat_llm_tensor_parallel_size": "1",  # vllm only: GPUs one chat_llm instance spans (heads 96 must divide)
    "chat_llm_pipeline_parallel_size": "1",  # vllm only: > 1 splits the layers across nodes (Ray)
    "chat_llm_instance_kind": "KIND_GPU",  # KIND_MODEL for vllm: one instance owns all its GPUs
    "llm_max_model_len": "",  # empty: the checkpoint's max_seq_len (32768)
    "llm_gpu_memory_utilization": "0.9",  # vllm only: share of each GPU for weights + KV cache
    "decoder_max_batch_size": "8",
    "batch_queue_delay_us": "20000",
    "decoder_gpu_instances": "2",
    # Work per request a served flow_decoder / vocoder accepts (CPU backend's feed validator): a default tts request
    # (4096 generated ids) with a 30 s voice prompt (1250 ids, 2584 mel frames) needs 5346 ids and 11050 frames.
    "decoder_max_tokens": "5400",
    "decoder_max_mel_frames": "11100",
    "tokenizer_max_batch_size": "8",
    "max_text_chars": "1000",
    "chat_max_context_tokens": "30000",
    "default_speaker": "Tingting",
    "max_sentence_chars": "200",
    "max_prompt_seconds": "30",
    "voice_cache_entries": "256",
    "stream_first_chunk_tokens": "25",
    "stream_chunk_growth": "2.0",
    "stream_max_chunk_tokens": "200",
    # Work per request (docs/hardening.md): generated ids, audio in, concurrent streams per model.
    "tts_max_new_tokens": "4096",  # ≈ 98 s of speech; a request may ask for fewer, never more
    "chat_max_new_tokens_limit": "4096",
    "max_audio_seconds": "60",
    "llm_max_streams": "128",  # running + queued generations per LLM model; more → UNAVAILABLE
    "stream_max_concurrent": "64",  # tts_stream / voice_chat_stream requests in flight per instance
    # Real-time sessions (vad, stream_tokenizer, realtime_session; docs/realtime.md).
    "realtime_max_sessions": "128",  # live sessions per model instance; more → UNAVAILABLE
    "realtime_idle_timeout_s": "30",  # a session without audio this long is freed (Triton's sequence idle too)
    "realtime_max_session_seconds": "1800",
    "realtime_max_chunk_seconds": "5",  # audio per request: clients send it as it arrives
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


def base_values(checkpoints: Path, voices: Path | None, overrides: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise RenderError(f"unknown --set key(s) {unknown}; known: {sorted(DEFAULTS)}")
    values = dict(DEFAULTS) | overrides
    values["realtime_idle_timeout_us"] = str(int(float(values["realtime_idle_timeout_s"]) * 1_000_000))
    values |= {
        "tts_checkpoint": str((checkpoints / layout.TTS_DIR).resolve()),
        "chat_checkpoint": str((checkpoints / layout.CHAT_DIR).resolve()),
        "tokenizer_checkpoint": str((checkpoints / layout.TOKENIZER_DIR).resolve()),
        "speech_decoder_dir": str((checkpoints / layout.TTS_DIR / layout.SPEECH_DECODER_DIR).resolve()),
        "music_decoder_dir": str((checkpoints / layout.TTS_DIR / layout.MUSIC_DECODER_DIR).resolve()),
        "voices_dir": str(Path(voices).resolve()) if voices else "",
    }
    return values


def render_model(model: ServedModel, out: Path, values: dict[str, str]) -> Path:
    """Copy and fill one model's folder; its build step (if any) is left to ``render``."""
    template = TEMPLATES / model.template
    if not template.is_dir():
        raise RenderError(f"no template folder {template}")
    target = out / model.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "README.md"))
    model_values = values | {"model_name": model.name} | model.values
    for config in [target / "config.pbtxt", *sorted((target / "configs").glob("*.pbtxt"))]:
        if config.exists():
            config.write_text(fill(config.read_text(), model_values, str(config.relative_to(out))))
    (target / "1").mkdir(exist_ok=True)  # ensembles need an (empty) version folder too
    return target


def render(
    checkpoints: Path,
    out: Path,
    voices: Path | None = None,
    overrides: dict[str, str] | None = None,
    only: list[str] | None = None,
) -> list[Path]:
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        raise RenderError(f"checkpoint directory {checkpoints} does not exist")
    values = base_values(checkpoints, voices, overrides or {})
    models = served_models(checkpoints)
    if only:
        unknown = sorted(set(only) - {m.name for m in models})
        if unknown:
            raise RenderError(f"unknown model(s) {unknown}")
        models = [m for m in models if m.name in only]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [render_model(m, out, values) for m in models]
    # Exports are single-threaded tracing: run them side by side, in fresh processes (no forked torch state).
    builds = [(m.build, target / "1") for m, target in zip(models, targets) if m.build is not None]
    with ProcessPoolExecutor(max(1, min(len(builds), os.cpu_count() or 1)), mp_context=get_context("spawn")) as pool:
        for future in [pool.submit(build, version) for build, version in builds]:
            future.result()
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
    args = parser.parse_args(argv)
    try:
        paths = render(args.checkpoints, args.out, args.voices, _parse_set(args.overrides), args.only)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
