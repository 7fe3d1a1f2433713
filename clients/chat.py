"""Voice chat in the terminal through ``voice_chat_stream`` (gRPC streaming).

    python -m clients.chat --text "你好"                      # one turn
    python -m clients.chat --audio question.wav --out-dir replies/
    python -m clients.chat --interactive                    # type text, or "@path.wav" to send a recording

The reply text prints as it streams; each reply's audio is written to ``--out-dir/reply_<n>.wav``. History is kept
as text: a spoken turn is replaced by the server's transcript of it (text-based context, as the reference does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from clients import triton_io
from stepaudio_contract.client import string


class ChatSession:
    def __init__(
        self,
        url: str,
        speaker: str | None,
        system_prompt: str | None,
        out_dir: Path,
        max_new_tokens: int | None = None,
        tts_max_new_tokens: int | None = None,
    ):
        self.conn = triton_io.client(url, "grpc")
        self.history: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.speaker, self.out_dir = speaker, out_dir
        self.max_new_tokens, self.tts_max_new_tokens = max_new_tokens, tts_max_new_tokens
        self.turns = 0

    def turn(self, text: str = "", audio_path: Path | None = None, echo=print) -> dict:
        tensors = {"HISTORY": string(json.dumps(self.history, ensure_ascii=False))}
        if text:
            tensors["TEXT"] = string(text)
        if audio_path is not None:
            import soundfile

            wave, rate = soundfile.read(audio_path, dtype="float32", always_2d=True)
            tensors["AUDIO"] = np.ascontiguousarray(wave.T)  # (channels, samples)
            tensors["SAMPLE_RATE"] = np.array([rate], np.int32)
        if self.speaker:
            tensors["SPEAKER"] = string(self.speaker)
        if self.max_new_tokens:
            tensors["MAX_NEW_TOKENS"] = np.array([self.max_new_tokens], np.int32)
        if self.tts_max_new_tokens:
            tensors["TTS_MAX_NEW_TOKENS"] = np.array([self.tts_max_new_tokens], np.int32)
        reply, transcript, chunks, rate = "", "", [], 22050
        for event in triton_io.grpc_stream(self.conn, "voice_chat_stream", tensors,
                                           ["TEXT_DELTA", "USER_TRANSCRIPT", "WAVEFORM", "SAMPLE_RATE"]):
            if "TEXT_DELTA" in event:
                delta = event["TEXT_DELTA"].reshape(-1)[0].decode()
                reply += delta
                echo(delta, end="", flush=True)
            if "WAVEFORM" in event:
                chunks.append(event["WAVEFORM"].reshape(-1))
                rate = int(event["SAMPLE_RATE"].reshape(-1)[0])
            if "USER_TRANSCRIPT" in event:
                transcript = event["USER_TRANSCRIPT"].reshape(-1)[0].decode()
        echo()
        user_text = "".join(part for part in (text, transcript) if part)
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]
        self.turns += 1
        wav_path = None
        if chunks:
            import soundfile

            self.out_dir.mkdir(parents=True, exist_ok=True)
            wav_path = self.out_dir / f"reply_{self.turns}.wav"
            soundfile.write(wav_path, np.concatenate(chunks), rate)
        return {"reply": reply, "transcript": transcript, "wav": wav_path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC host:port")
    parser.add_argument("--text", default="")
    parser.add_argument("--audio", type=Path)
    parser.add_argument("--speaker")
    parser.add_argument("--system-prompt")
    parser.add_argument("--max-new-tokens", type=int, help="cap on reply text tokens")
    parser.add_argument("--tts-max-new-tokens", type=int, help="cap on speech tokens per reply sentence")
    parser.add_argument("--out-dir", type=Path, default=Path("replies"))
    parser.add_argument("--interactive", action="store_true")
    args = parser.parse_args(argv)
    if not (args.text or args.audio or args.interactive):
        parser.error("give --text and/or --audio, or --interactive")
    session = ChatSession(
        args.url, args.speaker, args.system_prompt, args.out_dir, args.max_new_tokens, args.tts_max_new_tokens
    )
    try:
        if args.text or args.audio:
            print("assistant> ", end="")
            result = session.turn(args.text, args.audio)
            print(f"[audio: {result['wav']}]" if result["wav"] else "[no audio]")
        while args.interactive:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                continue
            audio = Path(line[1:]) if line.startswith("@") else None
            print("assistant> ", end="")
            result = session.turn("" if audio else line, audio)
            print(f"[audio: {result['wav']}]" if result["wav"] else "[no audio]")
    except Exception as exc:  # noqa: BLE001 - a CLI reports the server's message
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
