"""perf_analyzer ``--input-data`` files for the TTS endpoints.

    python -m clients.perf_inputs --out build/perf            # writes ensemble_tts.json and tts_stream.json

``ensemble_tts`` takes a batch dimension (shapes ``[1, ...]`` with ``-b 1``); ``tts_stream`` does not. Each file
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


def entries(batched: bool, speaker: str, max_new_tokens: int | None) -> list[dict]:
    lead = [1] if batched else []
    data = []
    for index, text in enumerate(TEXTS):
        entry = {
            "TEXT": {"content": [text], "shape": lead + [1]},
            "SPEAKER": {"content": [speaker], "shape": lead + [1]},
            "SEED": {"content": [index], "shape": lead + [1]},
        }
        if max_new_tokens:
            entry["MAX_NEW_TOKENS"] = {"content": [max_new_tokens], "shape": lead + [1]}
        data.append(entry)
    return data


def write(out: Path, speaker: str = "Tingting", max_new_tokens: int | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for model, batched in (("ensemble_tts", True), ("tts_stream", False)):
        path = out / f"{model}.json"
        path.write_text(json.dumps({"data": entries(batched, speaker, max_new_tokens)}, ensure_ascii=False, indent=1))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.perf_inputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/perf"))
    parser.add_argument("--speaker", default="Tingting")
    parser.add_argument("--max-new-tokens", type=int)
    args = parser.parse_args(argv)
    for path in write(args.out, args.speaker, args.max_new_tokens):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
