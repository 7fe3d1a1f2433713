"""Real-time voice sessions against a live server: turn latency with and without speculation, speculation outcomes,
barge-in reaction, at 1 / 4 / 8 concurrent sessions.

    python bench/bench_realtime.py --model-repository build/model_repository [--turns 20] [--concurrency 1 4 8]
    python bench/bench_realtime.py --url 127.0.0.1:8001 ...        # a running server (its metrics on --metrics-url)

Each session streams scripted turns in real time (40 ms chunks, as a microphone): a speech clip from tests/data
(half of the turns with a 300 ms pause inside: longer than the 200 ms that starts a speculative reply, shorter than
the 600 ms end of turn), then silence until the reply has finished. Measured per turn:
- **end of speech → first reply audio**: arrival of the reply's first audio delta minus the moment the chunk holding
  the last speech sample was sent (known from the clip: first/last sample above 0.02);
- **barge-in** (one extra turn per session): the user speaks again as soon as the reply's first audio arrives;
  speech onset sent → ``response.cancelled`` received;
- speculative replies started / committed / discarded and the worker seconds the discarded ones used (the server's
  counters on the metrics endpoint, before/after).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.realtime_client import TritonRealtimeSession  # noqa: E402
from stepaudio_server.launcher import TritonServer  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
CHUNK_SECONDS = 0.04
LEVEL = 0.02


@dataclass
class SessionResult:
    latencies: list[float] = field(default_factory=list)
    barge_ins: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# The first of these in a turn says whether the turn was answered with audio.
REPLY_OUTCOMES = ("response.audio.delta", "response.done", "error")


def no_audio_reason(event) -> str:
    """Why a turn got no audio: none in time, a reply that ended without speaking (tiny random weights can reply
    with text that holds no sentence), or a server error."""
    if event is None:
        return "no reply event in time"
    if event.type == "response.done":
        response = event.data["response"]
        return f"reply {response['status']} without audio (text {response['output_transcript']!r})"
    return f"error {event.data['error'].get('code')}: {event.data['error'].get('message', '')[:120]}"


class PacedSession:
    """A session streamed at real time; remembers when each audio sample left."""

    def __init__(self, url: str, rate: int, speculation: bool, seed: int, tokens: int, tts_tokens: int):
        self.s = TritonRealtimeSession(url, rate, seed=seed, speculation=speculation, max_new_tokens=tokens,
                                       tts_max_new_tokens=tts_tokens)
        self.rate, self.sent, self.events = rate, 0, []
        self.due = time.monotonic()

    def send(self, wave: np.ndarray) -> float:
        """Stream ``wave``; the wall time its last chunk left."""
        step = int(self.rate * CHUNK_SECONDS)
        left = time.monotonic()
        for i in range(0, wave.shape[0], step):
            self.due = max(self.due, time.monotonic() - CHUNK_SECONDS)
            time.sleep(max(0.0, self.due - time.monotonic()))
            chunk = wave[i:i + step]
            self.s.send(chunk)
            left = time.monotonic()
            self.due += chunk.shape[0] / self.rate
            self.sent += chunk.shape[0]
            self.events += list(self.s.events())
        return left

    def silence_until(self, predicate, max_seconds: float = 60.0, start: int = 0):
        """Stream silence in real time until an event from index ``start`` on satisfies ``predicate``."""
        deadline, checked = time.monotonic() + max_seconds, start
        while time.monotonic() < deadline:
            for event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = len(self.events)
            self.send(np.zeros(int(self.rate * CHUNK_SECONDS), np.float32))
        return None


def clip() -> tuple[np.ndarray, int, int, int]:
    wave, rate = sf.read(DATA / "speech_en_16k.wav", dtype="float32")
    wave = wave[: int(1.6 * rate)]
    loud = np.flatnonzero(np.abs(wave) > LEVEL)
    return wave, rate, int(loud[0]), int(loud[-1]) + 1


def run_session(url: str, speculation: bool, turns: int, index: int, tokens: int, tts_tokens: int) -> SessionResult:
    wave, rate, first, last = clip()
    result = SessionResult()
    session = PacedSession(url, rate, speculation, 100 + index, tokens, tts_tokens)
    pause = np.zeros(int(0.3 * rate), np.float32)
    try:
        session.send(np.zeros(int(0.3 * rate), np.float32))
        for turn in range(turns + 1):
            audio_before = len(session.events)
            if turn % 2:  # a pause inside the turn: a speculative reply starts and is discarded
                session.send(wave[: int(0.8 * rate)])
                session.send(pause)
                session.send(wave[: last])
            else:
                session.send(wave[:last])
            end_sent = session.due - CHUNK_SECONDS  # the chunk with the last speech sample was due then
            session.send(wave[last:])
            heard = session.silence_until(lambda e: e.type in REPLY_OUTCOMES, start=audio_before)
            if heard is None or heard.type != "response.audio.delta":
                result.failures.append(no_audio_reason(heard))
                continue
            result.latencies.append(heard.at - end_sent)
            if turn == turns:  # the barge-in turn
                onset = session.send(wave[:first + int(0.02 * rate)]) - CHUNK_SECONDS
                session.send(wave[first + int(0.02 * rate):last])
                cancelled = session.silence_until(lambda e: e.type == "response.cancelled", 30, start=audio_before)
                if cancelled is None:
                    result.failures.append("barge-in not cancelled")
                else:
                    result.barge_ins.append(cancelled.at - onset)
                session.send(wave[last:])
                session.silence_until(lambda e: e.type == "response.done", start=len(session.events) - 1)
            else:
                session.silence_until(lambda e: e.type in ("response.done", "response.cancelled"), start=audio_before)
        session.s.send(np.zeros(0, np.float32), end=True)
        time.sleep(0.5)
    finally:
        session.s.close()
    return result


def counters(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    values: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(stepaudio_realtime_\w+)\{([^}]*)\} (\S+)$", text, re.M):
        outcome = re.search(r'outcome="(\w+)"', labels)
        key = name + (f":{outcome[1]}" if outcome else "")
        values[key] = values.get(key, 0.0) + float(value)
    return values


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(url: str, metrics_url: str, concurrency: int, speculation: bool, turns: int, tokens: int, tts_tokens: int):
    before = counters(metrics_url)
    results: list[SessionResult] = [None] * concurrency
    per_session = max(1, -(-turns // concurrency))

    def one(i):
        results[i] = run_session(url, speculation, per_session, i, tokens, tts_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
        time.sleep(0.37)  # sessions out of phase, as real users
    for t in threads:
        t.join()
    after = counters(metrics_url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    latencies = [x for r in results for x in r.latencies]
    barge = [x for r in results for x in r.barge_ins]
    failures = [x for r in results for x in r.failures]
    return latencies, barge, failures, delta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path)
    parser.add_argument("--url", help="a running server's gRPC address")
    parser.add_argument("--metrics-url", help="its metrics endpoint (with --url)")
    parser.add_argument("--turns", type=int, default=20, help="scripted turns per measurement (split over sessions)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-new-tokens", type=int, default=12, help="reply text tokens")
    parser.add_argument("--tts-max-new-tokens", type=int, default=60, help="speech ids per sentence")
    args = parser.parse_args(argv)
    server = None
    if args.url:
        url, metrics_url = args.url, args.metrics_url
    else:
        server = TritonServer(args.model_repository).start(timeout=600)
        url, metrics_url = server.grpc_url, server.metrics_url
    try:
        run_session(url, True, 1, 99, args.max_new_tokens, args.tts_max_new_tokens)  # warm-up
        print("| sessions | speculation | turns | end of speech → first audio p50 / p95 (s) | barge-in → cancelled "
              "p50 / max (s) | speculative started / committed / discarded | discarded worker s | failures |")
        print("|---|---|---|---|---|---|---|---|")
        for concurrency in args.concurrency:
            for speculation in (False, True):
                lat, barge, failures, d = measure(url, metrics_url, concurrency, speculation, args.turns,
                                                  args.max_new_tokens, args.tts_max_new_tokens)
                started = d.get("stepaudio_realtime_replies_total:committed", 0) + d.get(
                    "stepaudio_realtime_replies_total:discarded", 0)
                print(f"| {concurrency} | {'on' if speculation else 'off'} | {len(lat)} | {percentile(lat, 50):.2f} / "
                      f"{percentile(lat, 95):.2f} | {percentile(barge, 50):.2f} / {max(barge, default=float('nan')):.2f} "
                      f"| {started:.0f} / {d.get('stepaudio_realtime_replies_total:committed', 0):.0f} / "
                      f"{d.get('stepaudio_realtime_replies_total:discarded', 0):.0f} | "
                      f"{d.get('stepaudio_realtime_discarded_reply_seconds_total', 0):.1f} | {len(failures)} |", flush=True)
                for reason, count in collections.Counter(failures).items():
                    print(f"<!-- {count} × {reason} -->", flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
