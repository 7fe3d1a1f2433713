"""Real-time voice sessions against a live server: turn latency with and without speculation, speculation outcomes,
barge-in reaction, at 1 / 4 / 8 concurrent sessions.

    python bench/bench_realtime.py --model-repository build/model_repository [--turns 20] [--concurrency 1 4 8]
    python bench/bench_realtime.py --url 127.0.0.1:8001 ...        # a running server (its metrics on --metrics-url)
    python bench/bench_realtime.py --openai ...                    # through a gateway's /v1/realtime, OpenAI protocol

With ``--openai`` each session is the official ``openai`` SDK's realtime client (``client.beta.realtime``) on a
gateway (started here, or ``--gateway-url`` with ``--api-key``), the clip resampled to the protocol's 24 kHz pcm16;
a barge-in is timed to ``response.done`` with status ``cancelled``.

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
import base64
import collections
import json
import queue
import re
import sys
import tempfile
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


@dataclass
class Arrived:
    type: str
    at: float
    data: dict


class OpenAIStream:
    """The gateway's ``/v1/realtime`` through the ``openai`` SDK's (sync) beta realtime client, with the interface
    of ``TritonRealtimeSession`` that ``PacedSession`` uses. ``response.done`` with status ``cancelled`` arrives as
    ``response.cancelled``, so the barge-in measure reads the same."""

    def __init__(self, gateway_url: str, api_key: str, rate: int, speculation: bool, seed: int, tokens: int,
                 tts_tokens: int):
        from openai import OpenAI

        client = OpenAI(api_key=api_key, base_url=gateway_url + "/v1",
                        websocket_base_url=gateway_url.replace("http", "ws", 1) + "/v1")
        self.manager = client.beta.realtime.connect(model="step-audio")
        self.connection = self.manager.enter()
        self.connection.session.update(session={"sample_rate": rate, "seed": seed, "speculation": speculation,
                                                "max_response_output_tokens": tokens, "max_speech_tokens": tts_tokens})
        self.arrived: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while True:
                data = json.loads(self.connection.recv_bytes())
                kind = data.get("type", "")
                if kind == "response.done" and data["response"].get("status") == "cancelled":
                    kind = "response.cancelled"
                self.arrived.put(Arrived(kind, time.monotonic(), data))
        except Exception:  # noqa: BLE001 - the socket closed: the session is over
            pass

    def send(self, chunk: np.ndarray, end: bool = False) -> None:
        if chunk.size:
            pcm = (np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()
            self.connection.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
        if end:
            self.connection.send({"type": "session.close"})

    def events(self) -> list[Arrived]:
        out = []
        while not self.arrived.empty():
            out.append(self.arrived.get_nowait())
        return out

    def close(self) -> None:
        self.connection.close()


class PacedSession:
    """A session streamed at real time; remembers when each audio sample left."""

    def __init__(self, url: str, rate: int, speculation: bool, seed: int, tokens: int, tts_tokens: int):
        if isinstance(url, tuple):  # (gateway url, api key): the OpenAI protocol
            self.s = OpenAIStream(*url, rate, speculation, seed, tokens, tts_tokens)
        else:
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


def clip(openai: bool = False) -> tuple[np.ndarray, int, int, int]:
    wave, rate = sf.read(DATA / "speech_en_16k.wav", dtype="float32")
    wave = wave[: int(1.6 * rate)]
    if openai:  # the protocol's pcm16 rate
        import soxr

        wave, rate = soxr.resample(wave, rate, 24000).astype(np.float32), 24000
    loud = np.flatnonzero(np.abs(wave) > LEVEL)
    return wave, rate, int(loud[0]), int(loud[-1]) + 1


def run_session(url: str, speculation: bool, turns: int, index: int, tokens: int, tts_tokens: int) -> SessionResult:
    wave, rate, first, last = clip(isinstance(url, tuple))
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
    parser.add_argument("--openai", action="store_true", help="through a gateway, the OpenAI Realtime protocol")
    parser.add_argument("--gateway-url", help="a running gateway (with --openai)")
    parser.add_argument("--api-key", default="bench-key")
    args = parser.parse_args(argv)
    server = gateway = None
    if args.url:
        url, metrics_url = args.url, args.metrics_url
    else:
        server = TritonServer(args.model_repository).start(timeout=600)
        url, metrics_url = server.grpc_url, server.metrics_url
    if args.openai:
        if not args.gateway_url:
            from gateway.process import GatewayProcess

            folder = Path(tempfile.mkdtemp(prefix="bench_realtime_"))
            gateway = GatewayProcess(url, folder / "voices.sqlite3", folder / "gateway.log", "--rate-per-minute",
                                     "100000", "--max-concurrent", "64", keys=(args.api_key,))
        url = (args.gateway_url or gateway.url, args.api_key)
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
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
