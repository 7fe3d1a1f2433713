"""python -m gateway --triton-grpc HOST:PORT [--host 127.0.0.1] [--port 8080] [--db PATH] [--api-key KEY ...]

API keys also come from STEPAUDIO_GATEWAY_API_KEYS (comma-separated), which keeps them out of the process list.
A key may carry a name, ``alice:sk-1``: keys of one name share voices and limits, so a key can be rotated.
Without keys the gateway serves only a loopback address, and answers only requests addressed to a loopback name.
On SIGTERM it stops accepting and lets running streams finish for up to --drain-timeout seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.config import Settings


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str]:
    defaults = Settings(triton_grpc="")
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton-grpc", required=True, help="Triton gRPC address, host:port")
    parser.add_argument("--host", default=defaults.host, help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--db", type=Path, default=defaults.db, help="SQLite file of uploaded voices")
    parser.add_argument("--api-key", action="append", default=[],
                        help="accepted bearer key, KEY or NAME:KEY (repeat for several; prefer the environment)")
    parser.add_argument("--auth-failures-per-minute", type=int, default=defaults.auth_failures_per_minute,
                        help="failed key checks per client address per minute before it gets 429")
    parser.add_argument("--allowed-origin", action="append", default=[],
                        help="browser Origin allowed besides the gateway's own (repeat), e.g. https://app.example")
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s,
                        help="seconds running streams may take to finish after SIGTERM")
    parser.add_argument("--rate-per-minute", type=int, default=defaults.rate_per_minute, help="requests per key per minute")
    parser.add_argument("--max-concurrent", type=int, default=defaults.max_concurrent, help="streams per key at once")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-input-chars", type=int, default=defaults.max_input_chars)
    parser.add_argument("--max-upload-bytes", type=int, default=defaults.max_upload_bytes)
    parser.add_argument("--max-upload-seconds", type=float, default=defaults.max_upload_seconds)
    parser.add_argument("--max-voices", type=int, default=defaults.max_voices, help="uploaded voices per key name")
    parser.add_argument("--max-voice-bytes", type=int, default=defaults.max_voice_bytes,
                        help="bytes of uploaded voice samples per key name (float32: 4 per sample)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help="speech ids per TTS request that names none (about 41.7 per second)")
    parser.add_argument("--max-new-tokens-limit", type=int, default=defaults.max_new_tokens_limit,
                        help="the most speech ids a request may ask for (extra body field max_new_tokens)")
    parser.add_argument("--chat-max-tokens", type=int, default=defaults.chat_max_tokens, help="default and cap of reply text tokens")
    parser.add_argument("--chat-tts-max-new-tokens", type=int, default=defaults.chat_tts_max_new_tokens,
                        help="speech ids per chat reply sentence")
    parser.add_argument("--stall-timeout", type=float, default=defaults.stall_timeout_s,
                        help="seconds a Triton stream may send nothing before the request fails with 503")
    parser.add_argument("--preset-voice", action="append", default=None,
                        help=f"preset speaker the server knows, listed by /v1/audio/voices (default {', '.join(defaults.preset_voices)})")
    parser.add_argument("--voice-aliases", type=Path, default=defaults.voice_aliases,
                        help="JSON table of OpenAI voice names → preset (null: the first preset)")
    parser.add_argument("--require-model", action="append", default=None,
                        help="served model that /health waits for (repeat; default: the streaming models and their parts)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    keys = [k for k in os.environ.get("STEPAUDIO_GATEWAY_API_KEYS", "").split(",") if k.strip()]
    return Settings(
        triton_grpc=args.triton_grpc, host=args.host, port=args.port, db=args.db,
        api_keys=tuple(k.strip() for k in [*args.api_key, *keys]),
        auth_failures_per_minute=args.auth_failures_per_minute, allowed_origins=tuple(args.allowed_origin),
        drain_timeout_s=args.drain_timeout, rate_per_minute=args.rate_per_minute, max_concurrent=args.max_concurrent, max_body_bytes=args.max_body_bytes,
        max_input_chars=args.max_input_chars, max_upload_bytes=args.max_upload_bytes,
        max_upload_seconds=args.max_upload_seconds, max_new_tokens=args.max_new_tokens,
        max_voices=args.max_voices, max_voice_bytes=args.max_voice_bytes,
        max_new_tokens_limit=args.max_new_tokens_limit,
        chat_max_tokens=args.chat_max_tokens, chat_tts_max_new_tokens=args.chat_tts_max_new_tokens,
        stall_timeout_s=args.stall_timeout,
        preset_voices=tuple(args.preset_voice or defaults.preset_voices),
        voice_aliases=args.voice_aliases,
        required_models=tuple(args.require_model or defaults.required_models),
    ), args.log_level


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from gateway.app import create_app

    settings, log_level = parse_args(argv)
    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    auth = "on" if settings.api_keys else "off (loopback only)"
    print(f"gateway: http://{settings.host}:{settings.port}/  (Triton gRPC {settings.triton_grpc}, auth {auth}, "
          f"voices {settings.db})", flush=True)
    # SIGTERM: uvicorn stops accepting, waits for running responses (streams) up to the drain timeout, then cancels.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=log_level == "debug",
                timeout_graceful_shutdown=settings.drain_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
