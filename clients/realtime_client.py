"""A real-time voice session from the terminal, straight to Triton over one gRPC stream (``realtime_session``).

    python -m clients.realtime_client --wav question.wav --out-dir session/      # streams the wav in real time
    python -m clients.realtime_client --wav q.wav --speed 4 --no-speculation    # faster than real time, no speculation

The wav (any rate the server takes: 8–48 kHz, mono or mixed down) leaves in 20 ms chunks at its own pace (``--speed``
scales it), followed by ``--tail`` seconds of silence so the last turn can end and its reply arrive. Written to
``--out-dir``: ``reply_<n>.wav`` per reply (what was heard: a barged-in reply is cut where it stopped) and
``events.jsonl`` (each event with the session time it arrived, audio deltas without their samples).
``TritonRealtimeSession`` is the same session for programs (tests, ``bench/bench_realtime.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stepaudio_contract import client as contract

CHUNK_SECONDS = 0.02
_sequence_ids = itertools.count(int.from_bytes(os.urandom(4), "little") << 16)


@dataclass
class Event:
    type: str
    data: dict
    waveform: np.ndarray | None
    at: float  # time.monotonic() when it arrived


@dataclass
class TritonRealtimeSession:
    """One ``realtime_session`` sequence: ``send(chunk)`` (START with the options on the first), ``events()``."""

    url: str
    sample_rate: int
    model: str = "realtime_session"
    speaker: str | None = None
    seed: int | None = None
    speculation: bool | None = None
    max_new_tokens: int | None = None
    tts_max_new_tokens: int | None = None
    sequence_id: int = field(default_factory=lambda: next(_sequence_ids))

    def __post_init__(self):
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(self.url)
        self._queue: queue.Queue = queue.Queue()
        self._client.start_stream(callback=self._on_response)
        self._started = self._ended = False

    def _on_response(self, result, error):
        now = time.monotonic()
        if error is not None:
            self._queue.put(Event("error", {"error": {"type": "request_error", "message": str(error)}}, None, now))
            return
        response = result.get_response()
        names = {o.name for o in response.outputs}
        if "EVENT" not in names:
            return  # an empty final response: a request's sender closed
        event = json.loads(result.as_numpy("EVENT").reshape(-1)[0].decode())
        waveform = result.as_numpy("WAVEFORM") if "WAVEFORM" in names else None
        self._queue.put(Event(event["type"], event, waveform, now))

    def send(self, chunk: np.ndarray, end: bool = False) -> None:
        tensors = {"AUDIO": np.asarray(chunk, dtype=np.float32)[None]}
        if not self._started:
            tensors |= contract.session_start(self, self.sample_rate, self.speaker)
        inputs = contract.infer_inputs(tensors)
        self._client.async_stream_infer(self.model, inputs, sequence_id=self.sequence_id, sequence_start=not self._started,
                                        sequence_end=end, enable_empty_final_response=True)
        self._started, self._ended = True, end

    def events(self, timeout: float = 0.0):
        """The events that have arrived (waiting up to ``timeout`` for the first)."""
        try:
            yield self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                yield self._queue.get_nowait()
        except queue.Empty:
            return

    def close(self) -> None:
        self._client.stop_stream()
        self._client.close()


def paced(wave: np.ndarray, rate: int, speed: float = 1.0, chunk_seconds: float = CHUNK_SECONDS):
    """Chunks of ``wave`` at the pace a microphone would give them (``speed`` × real time)."""
    step = max(1, int(rate * chunk_seconds))
    start = time.monotonic()
    for i in range(0, wave.shape[0], step):
        due = start + i / rate / speed
        if (delay := due - time.monotonic()) > 0:
            time.sleep(delay)
        yield wave[i:i + step]


class Timeline:
    """Events and reply audio of one session, as the CLI writes them."""

    def __init__(self):
        self.start = time.monotonic()
        self.events: list[dict] = []
        self.audio: dict[str, list[np.ndarray]] = {}
        self.rate = 22050

    def add(self, event: Event) -> None:
        record = {"t": round(event.at - self.start, 4), **{k: v for k, v in event.data.items() if k != "delta"
                                                            or event.type != "response.audio.delta"}}
        if event.waveform is not None:
            self.audio.setdefault(event.data["response_id"], []).append(event.waveform)
            self.rate = event.data.get("sample_rate", self.rate)
            record["samples"] = int(event.waveform.shape[0])
        self.events.append(record)

    def write(self, out_dir: Path) -> list[Path]:
        import soundfile as sf

        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "events.jsonl", "w") as f:
            for record in self.events:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths = []
        for n, chunks in enumerate(self.audio.values(), 1):
            paths.append(out_dir / f"reply_{n}.wav")
            sf.write(paths[-1], np.concatenate(chunks), self.rate)
        return paths


def run(args) -> int:
    from stepaudio.audio import load_audio

    wave, rate = load_audio(args.wav)
    wave = wave.mean(axis=0) if wave.ndim == 2 else wave
    session = TritonRealtimeSession(args.url, rate, speaker=args.speaker, seed=args.seed,
                                    speculation=False if args.no_speculation else None,
                                    max_new_tokens=args.max_new_tokens, tts_max_new_tokens=args.tts_max_new_tokens)
    timeline = Timeline()
    audio = np.concatenate([wave.astype(np.float32), np.zeros(int(args.tail * rate), np.float32)])
    try:
        for chunk in paced(audio, rate, args.speed):
            session.send(chunk)
            for event in session.events():
                timeline.add(event)
                _print(event, timeline.start)
        session.send(np.zeros(0, np.float32), end=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for event in session.events(timeout=1.0):
                timeline.add(event)
                _print(event, timeline.start)
                if event.type == "session.closed":
                    deadline = 0
    finally:
        session.close()
    for path in timeline.write(args.out_dir):
        print(f"wrote {path}")
    print(f"wrote {args.out_dir / 'events.jsonl'}")
    return 0


def _print(event: Event, start: float) -> None:
    if event.type == "response.audio.delta":
        return
    detail = {k: v for k, v in event.data.items() if k != "type"}
    print(f"{event.at - start:7.2f}s  {event.type}  {json.dumps(detail, ensure_ascii=False)[:160]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.realtime_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address")
    parser.add_argument("--wav", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, default=Path("realtime_session"))
    parser.add_argument("--speed", type=float, default=1.0, help="audio pace as a multiple of real time")
    parser.add_argument("--tail", type=float, default=8.0, help="seconds of silence streamed after the wav")
    parser.add_argument("--speaker", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-speculation", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--tts-max-new-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be positive")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
