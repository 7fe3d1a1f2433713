"""One-command demo: checkpoints → rendered repository → real tritonserver → TTS offline and streamed → wavs →
the OpenAI-compatible gateway in front (one offline and one streamed request through it) → serves the web page
until Ctrl-C (``--once`` stops after the requests).

A rendered repository is reused while nothing that shapes it changed (``export.render_repository``'s digest); the
exporters' own output goes to ``<build>/render.log``, the server's to ``<build>/server.log``, the gateway's to
``<build>/gateway.log``. The terminal gets one line per step with its time, and a progress bar while the exports
run and while the server loads its models.

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
from stepaudio_server.launcher import TritonServer

TEXT = "(高兴1)你好，欢迎使用阶跃星辰的语音合成服务。"


class ProgressBar:
    """A tqdm bar fed (done, total) counts; opened on the first count, closed by ``close``."""

    def __init__(self, description: str, unit: str):
        self.description, self.unit, self.bar = description, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"  {self.description}", unit=self.unit, leave=False,
                            bar_format="{desc}: {bar:30} {n}/{total} {unit} [{elapsed}]")
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def gateway_requests(url: str, text: str, outputs: Path) -> None:
    """One offline and one streamed request through the gateway with the official openai client."""
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)  # auth is off on loopback
    request = {"model": "step-audio-tts", "input": text, "voice": "Tingting", "extra_body": {"seed": 7}}
    started = time.perf_counter()
    path = outputs / "gateway_offline.wav"
    client.audio.speech.create(**request, response_format="wav").write_to_file(path)
    print(f"gateway  {path}: {(time.perf_counter() - started) * 1000:.0f} ms (POST /v1/audio/speech, wav)")
    started, first = time.perf_counter(), None
    path = outputs / "gateway_stream.mp3"
    with client.audio.speech.with_streaming_response.create(**request, response_format="mp3") as response, \
            open(path, "wb") as out:
        for chunk in response.iter_bytes():
            first = first if first is not None else time.perf_counter() - started
            out.write(chunk)
    print(f"gateway  {path}: {(time.perf_counter() - started) * 1000:.0f} ms, first audio {first * 1000:.0f} ms "
          "(streamed mp3)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap on speech tokens (default: 150 with tiny checkpoints, none with real ones)")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (0 picks a free one)")
    parser.add_argument("--once", action="store_true", help="stop after the demo requests instead of serving until Ctrl-C")
    args = parser.parse_args(argv)
    from clients import tts as tts_client
    from export.render_repository import render

    build = args.build
    build.mkdir(parents=True, exist_ok=True)
    demo_started = started = time.perf_counter()
    checkpoints = prepare_checkpoints(build)
    voices = prepare_voices(checkpoints, build)
    repository = build / "model_repository"
    exports = ProgressBar("exporting", "models")
    try:
        render(checkpoints, repository, voices, log_path=build / "render.log", progress=lambda line: print(f"  {line}"),
               on_exported=exports)
    finally:
        exports.close()
    print(f"repository {repository} ready in {time.perf_counter() - started:.1f} s")
    tiny = "STEPAUDIO_CHECKPOINTS" not in os.environ
    cap = args.max_new_tokens or (150 if tiny else None)
    outputs = build / "demo"
    outputs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # A busy 2-core machine can need more than the launcher's default 120 s to load every model.
    print(f"starting tritonserver (log: {build / 'server.log'})")
    loading = ProgressBar("loading", "models ready")
    try:
        server = TritonServer(repository, http_port=0, grpc_port=0, metrics_port=0, log_path=build / "server.log")
        server.start(timeout=300, on_models_ready=loading)
    finally:
        loading.close()
    with server:
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
        from gateway.process import GatewayProcess

        limits = ["--max-new-tokens", str(cap)] if cap else []
        with GatewayProcess(server.grpc_url, build / "gateway_voices.sqlite3", build / "gateway.log", *limits,
                            port=args.port) as gateway:
            gateway_requests(gateway.url, args.text, outputs)
            print(f"demo done in {time.perf_counter() - demo_started:.1f} s")
            print(f"web page: {gateway.url}/   OpenAI base_url: {gateway.url}/v1")
            if not args.once:
                print("serving until Ctrl-C")
                try:
                    while gateway.process.poll() is None and server.process.poll() is None:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
