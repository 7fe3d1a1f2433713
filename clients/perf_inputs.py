"""perf_analyzer ``--input-data`` files for the TTS endpoints.

    python -m clients.perf_inputs --out build/perf            # writes ensemble_tts.json and tts_stream.json

perf_analyzer's input-data shapes never include the batch dimension (``ensemble_tts`` is run with ``-b 1``, which
adds it), so both files hold ``[1]`` tensors. Every entry caps ``MAX_NEW_TOKENS``: a model that seldom samples the
stop id (the tiny test checkpoints) would otherwise generate up to the 4,096-id server limit per request. Each file
cycles through several texts and seeds so that responses are not all alike. See the README for the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEXTS = (
    "你好，欢迎使用阶跃星辰的语音合成服务。",
    "(高兴1)今天的天气真不错，我们一起去公园散步吧。",
    "(慢速1)请在听到提示音之后留言。",
    "Hello, this is a streaming speech synthesis test.",
)
MODELS = ("ensemble_tts", "tts_stream")
DEFAULT_MAX_NEW_TOKENS = 120  # ≈ 2.9 s of speech per request


def entries(speaker: str, max_new_tokens: int) -> list[dict]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    return [
        {
            "TEXT": {"content": [text], "shape": [1]},
            "SPEAKER": {"content": [speaker], "shape": [1]},
            "SEED": {"content": [index], "shape": [1]},
            "MAX_NEW_TOKENS": {"content": [max_new_tokens], "shape": [1]},
        }
        for index, text in enumerate(TEXTS)
    ]


def write(out: Path, speaker: str = "Tingting", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in MODELS:
        path = out / f"{model}.json"
        path.write_text(json.dumps({"data": entries(speaker, max_new_tokens)}, ensure_ascii=False, indent=1))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.perf_inputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/perf"))
    parser.add_argument("--speaker", default="Tingting")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    for path in write(args.out, args.speaker, args.max_new_tokens):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
