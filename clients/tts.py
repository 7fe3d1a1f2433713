"""Text → wav through the served TTS.

    python -m clients.tts --text "(高兴1)你好" --speaker Tingting --out hello.wav            # ensemble_tts, HTTP
    python -m clients.tts --text "..." --prompt-wav me.wav --prompt-text "..." --protocol grpc --out clone.wav
    python -m clients.tts --text "..." --speaker Tingting --stream --out stream.wav          # tts_stream, gRPC

Offline requests go to ``ensemble_tts`` (``ensemble_tts_music`` when the text opens with (RAP) or (哼唱)).
``--stream`` writes chunks as they arrive (gRPC stream, or HTTP generate_stream with ``--protocol http``) and
prints the first-chunk latency and the real-time factor (wall time ÷ audio duration).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from clients import triton_io
from stepaudio_contract import client as contract
from stepaudio_contract.client import string


def request_tensors(args) -> dict[str, np.ndarray]:
    """Unbatched tensors (``tts_stream`` shape); offline calls add the batch dimension of 1."""
    tensors = {"TEXT": string(args.text)}
    if args.prompt_wav:
        import soundfile

        wave, rate = soundfile.read(args.prompt_wav, dtype="float32", always_2d=True)
        tensors["PROMPT_AUDIO"] = np.ascontiguousarray(wave.mean(axis=1))
        tensors["PROMPT_SAMPLE_RATE"] = np.array([rate], np.int32)
        tensors["PROMPT_TEXT"] = string(args.prompt_text)
    else:
        tensors["SPEAKER"] = string(args.speaker)
    return tensors | contract.sampling(args)  # each has an option of its name: --seed, --top-k, ...


def offline_model(text: str) -> str:
    from stepaudio.tts.tags import parse_style_tags

    return "ensemble_tts_music" if parse_style_tags(text).music else "ensemble_tts"


def synthesize(args) -> tuple[np.ndarray, int, dict]:
    tensors = request_tensors(args)
    start = time.perf_counter()
    if not args.stream:
        conn = triton_io.client(args.url, args.protocol)
        batched = {name: value[None] for name, value in tensors.items()}
        out = triton_io.infer(conn, args.protocol, offline_model(args.text), batched, ["WAVEFORM", "SAMPLE_RATE"])
        wave, rate = out["WAVEFORM"].reshape(-1), int(out["SAMPLE_RATE"].reshape(-1)[0])
        return wave, rate, {"latency_s": time.perf_counter() - start}
    if args.protocol == "grpc":
        events = triton_io.grpc_stream(triton_io.client(args.url, "grpc"), "tts_stream", tensors, ["WAVEFORM", "SAMPLE_RATE"])
    else:
        events = triton_io.http_generate_stream(args.url, "tts_stream", triton_io.json_payload(tensors))
    chunks, arrivals, first, rate = [], [], None, 22050
    for event in events:
        chunk = np.asarray(event["WAVEFORM"], dtype=np.float32).reshape(-1)
        rate = int(np.asarray(event["SAMPLE_RATE"]).reshape(-1)[0])
        arrivals.append((time.perf_counter() - start, chunk.size))
        if first is None and chunk.size:
            first = arrivals[-1][0]
        chunks.append(chunk)
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return wave, rate, {"first_chunk_s": first, "latency_s": time.perf_counter() - start, "chunks": len(chunks),
                        "arrivals": arrivals}  # (s since the request, samples) per chunk: bench/playback.py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.tts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8000 for HTTP, :8001 for gRPC)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--text", required=True)
    voice = parser.add_mutually_exclusive_group(required=True)
    voice.add_argument("--speaker")
    voice.add_argument("--prompt-wav", type=Path)
    parser.add_argument("--prompt-text")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.prompt_wav and not args.prompt_text:
        parser.error("--prompt-wav needs --prompt-text (its transcript)")
    args.url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    try:
        wave, rate, timing = synthesize(args)
    except Exception as exc:  # noqa: BLE001 - a CLI reports the server's message
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import soundfile

    soundfile.write(args.out, wave, rate)
    seconds = wave.size / rate
    parts = [f"wrote {args.out}: {seconds:.2f} s at {rate} Hz", f"latency {timing['latency_s'] * 1000:.0f} ms"]
    if timing.get("first_chunk_s") is not None:
        parts.append(f"first chunk {timing['first_chunk_s'] * 1000:.0f} ms ({timing['chunks']} chunks)")
    if seconds:
        parts.append(f"RTF {timing['latency_s'] / seconds:.3f}")
    print(", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
