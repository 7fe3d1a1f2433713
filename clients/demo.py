"""One-command demo: checkpoints → rendered repository → real tritonserver → TTS offline and streamed → wavs.

    make demo                                            # tiny random checkpoints (noise, not speech)
    STEPAUDIO_CHECKPOINTS=/models make demo              # the downloaded Step-Audio-TTS-3B + Step-Audio-Tokenizer
    STEPAUDIO_VOICES=/path/Step-Audio/speakers make demo # preset voices (default: <checkpoints>/speakers, else synthetic)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

from stepaudio.checkpoints import layout, write_tree
from stepaudio.serve import TritonServer

TEXT = "(高兴1)你好，欢迎使用阶跃星辰的语音合成服务。"


def prepare_checkpoints(build: Path) -> Path:
    given = os.environ.get("STEPAUDIO_CHECKPOINTS")
    if given:
        root = Path(given)
        for needed in (layout.TTS_DIR, layout.TOKENIZER_DIR):
            if not (root / needed).is_dir():
                raise SystemExit(f"STEPAUDIO_CHECKPOINTS={root} has no {needed}/")
        return root
    root = build / "checkpoints"
    if not (root / layout.TTS_DIR / layout.LLM_CONFIG).exists():
        print(f"writing tiny random checkpoints to {root} (they produce noise, not speech)")
        write_tree(root, "tiny", seed=0)
    return root


def prepare_voices(checkpoints: Path, build: Path) -> Path:
    given = os.environ.get("STEPAUDIO_VOICES")
    if given:
        return Path(given)
    if (checkpoints / layout.SPEAKERS_DIR).is_dir():
        return checkpoints / layout.SPEAKERS_DIR
    print("no preset voices given (STEPAUDIO_VOICES): using synthetic prompt audio")
    write_tree(build, "tiny", only=["voices"])
    return build / layout.SPEAKERS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap on speech tokens (default: 150 with tiny checkpoints, none with real ones)")
    args = parser.parse_args(argv)
    from clients import tts as tts_client
    from export.render_repository import render

    build = args.build
    checkpoints = prepare_checkpoints(build)
    voices = prepare_voices(checkpoints, build)
    repository = build / "model_repository"
    started = time.perf_counter()
    render(checkpoints, repository, voices)
    print(f"rendered {repository} in {time.perf_counter() - started:.1f} s")
    tiny = "STEPAUDIO_CHECKPOINTS" not in os.environ
    cap = args.max_new_tokens or (150 if tiny else None)
    outputs = build / "demo"
    outputs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with TritonServer(repository, http_port=0, grpc_port=0, metrics_port=0, log_path=build / "server.log") as server:
        print(f"tritonserver ready in {time.perf_counter() - started:.1f} s: http://{server.http_url} grpc {server.grpc_url}")
        for name, stream, protocol, url in (("offline", False, "http", server.http_url),
                                            ("stream", True, "grpc", server.grpc_url)):
            request = types.SimpleNamespace(
                url=url, protocol=protocol, text=args.text, speaker="Tingting", prompt_wav=None, prompt_text=None,
                stream=stream, seed=7, temperature=None, top_k=None, top_p=None, max_new_tokens=cap,
            )
            wave, rate, timing = tts_client.synthesize(request)
            import soundfile

            path = outputs / f"tts_{name}.wav"
            soundfile.write(path, wave, rate)
            seconds = wave.size / rate
            line = f"{name:8s} {path}: {seconds:.2f} s audio, {timing['latency_s'] * 1000:.0f} ms"
            if timing.get("first_chunk_s") is not None:
                line += f", first chunk {timing['first_chunk_s'] * 1000:.0f} ms in {timing['chunks']} chunks"
            print(line + (f", RTF {timing['latency_s'] / seconds:.2f}" if seconds else ""))
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
