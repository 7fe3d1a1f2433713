"""Real-time voice sessions against a live server: turn latency with and without speculation, speculative commits,
barge-in reaction, at 1 / 4 / 8 concurrent sessions.

    python bench/bench_realtime.py --tiny build/bench_tiny_repository [--turns 3] [--out realtime.json]
    python bench/bench_realtime.py --model-repository build/model_repository ...   # a rendered repository
    python bench/bench_realtime.py --url 127.0.0.1:8001 --metrics-url ...          # a running server
    python bench/bench_realtime.py --protocol native ...                            # gRPC straight to Triton

``--protocol openai`` (the default): each session is the official ``openai`` SDK's realtime client
(``client.beta.realtime.connect``, as tests/gateway/test_openai_realtime.py connects) on a gateway's
``/v1/realtime`` (started here next to the server, or ``--gateway-url`` with ``--api-key``), with ``server_vad``
turn detection and the session's ``speculation`` extension; the clip is resampled to the protocol's 24 kHz pcm16.
``--protocol native``: the project's own events over one gRPC stream (``clients/realtime_client.py``).

Each session streams ``--turns`` scripted turns plus one barge-in turn in real time (40 ms chunks, as a microphone):
the shipped espeak-ng clip tests/data/speech_en_16k.wav (every other turn with a 300 ms pause inside: longer than
the 200 ms that starts a speculative reply, shorter than the 600 ms end of turn), then silence until the reply has
finished. Every session keeps a timeline (its own marks and every server event, with arrival times); ``summarize``
turns the timelines into, per configuration:
- **end of speech → first reply audio** (ms, p50 / p95): the first ``response.audio.delta`` after the moment the
  chunk holding the turn's last speech sample was sent (known from the clip: last sample above 0.02);
- **speculative commit rate**: responses whose ``response.created`` says speculative (OpenAI:
  ``response.metadata.speculative``) / turns — discarded speculative replies send nothing, so every speculative
  response seen is a committed one;
- **barge-in** (the last turn of each session): the user speaks again as soon as the reply's first audio arrives;
  speech onset sent → the interrupted response's last audio delta (0 when none came after the onset) and → its
  ``response.done`` with status ``cancelled`` (native: ``response.cancelled``);
- with a server started here or ``--metrics-url``: speculative replies started / committed / discarded and the
  worker seconds the discarded ones used (the server's counters, before/after).
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
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
CHUNK_SECONDS = 0.04
LEVEL = 0.02
OPENAI_RATE = 24000  # the protocol's pcm16
# The served defaults, stated: the bench measures server_vad turn detection.
TURN_DETECTION = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 100, "silence_duration_ms": 600,
                  "create_response": True, "interrupt_response": True}
# The first of these after the end of speech says whether the turn was answered with audio.
REPLY_OUTCOMES = ("response.audio.delta", "response.done", "error")
SPEECH_END, TURN_START, BARGE_ONSET = "bench.speech_end", "bench.turn_start", "bench.barge_onset"


# ---- timelines → statistics (pure: tests/bench/test_bench_realtime.py) ---------------------------------------------
def slim(kind: str, data: dict, at: float) -> dict:
    """A server event as the timeline keeps it (no audio), in the OpenAI protocol's terms: the native
    ``response.cancelled`` becomes ``response.done`` with status ``cancelled``."""
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    event = {"type": kind, "at": at, "response_id": data.get("response_id") or response.get("id")}
    if kind == "response.cancelled":
        event.update(type="response.done", status="cancelled")
    elif kind == "response.created":
        metadata = response.get("metadata") or {}
        event["speculative"] = bool(metadata.get("speculative", response.get("speculative", False)))
    elif kind == "response.done":
        event["status"] = response.get("status")
        event["transcript"] = response.get("output_transcript") or _transcript(response)
    elif kind == "error":
        error = data.get("error") or {}
        event["error"] = f"{error.get('code')}: {str(error.get('message', ''))[:120]}"
    return event


def _transcript(response: dict) -> str:
    for item in response.get("output") or []:
        for part in item.get("content") or []:
            if part.get("transcript"):
                return part["transcript"]
    return ""


def no_audio_reason(event: dict | None) -> str:
    """Why a turn got no audio: none in time, a reply that ended without speaking (tiny random weights can reply
    with text that holds no sentence), or a server error."""
    if event is None:
        return "no reply event in time"
    if event["type"] == "response.done":
        return f"reply {event.get('status')} without audio (text {event.get('transcript', '')!r})"
    return f"error {event.get('error')}"


def session_metrics(timeline: list[dict]) -> dict:
    """One session's turns: latencies (s), speculative responses, barge-in reactions (s) and failures."""
    out = {"turns": 0, "latencies": [], "responses": 0, "speculative": 0, "barge_in_tries": 0, "barge_to_last_audio": [],
           "barge_to_cancelled": [], "failures": []}
    in_turn = False  # responses count from a turn's end of speech to the next turn's start (not the interruption's)
    for i, entry in enumerate(timeline):
        if entry["type"] == TURN_START:
            in_turn = False
        elif entry["type"] == SPEECH_END:
            in_turn = True
            out["turns"] += 1
            outcome = next((e for e in timeline[i + 1:] if e["type"] in REPLY_OUTCOMES + (TURN_START,)), None)
            if outcome is None or outcome["type"] != "response.audio.delta":
                out["failures"].append(no_audio_reason(None if outcome is None or outcome["type"] == TURN_START
                                                       else outcome))
            else:
                out["latencies"].append(outcome["at"] - entry["at"])
        elif entry["type"] == "response.created" and in_turn:
            out["responses"] += 1
            out["speculative"] += bool(entry.get("speculative"))
        elif entry["type"] == BARGE_ONSET:
            out["barge_in_tries"] += 1
            _barge_in(timeline, i, out)
    return out


def _barge_in(timeline: list[dict], index: int, out: dict) -> None:
    onset = timeline[index]["at"]
    # The interrupted reply: the latest one created before the onset.
    created = [e for e in timeline[:index] if e["type"] == "response.created"]
    if not created:
        out["failures"].append("barge-in without a reply to interrupt")
        return
    rid = created[-1]["response_id"]
    own = [e for e in timeline if e.get("response_id") == rid and e["type"] in ("response.audio.delta", "response.done")]
    done = next((e for e in own if e["type"] == "response.done"), None)
    if done is None or done.get("status") != "cancelled":
        # A reply that had sent everything before the interruption was detected has nothing left to cancel (a
        # committed speculation releases its held audio at once): the client would stop its playback instead.
        ended = "before" if done is not None and done["at"] <= onset else "after"
        out["failures"].append("barge-in not cancelled" if done is None
                               else f"barge-in: reply {done.get('status')} {ended} the onset")
        return
    last_audio = max((e["at"] for e in own if e["type"] == "response.audio.delta"), default=onset)
    out["barge_to_last_audio"].append(max(0.0, last_audio - onset))
    out["barge_to_cancelled"].append(done["at"] - onset)


def _ms(values: list[float], q: float) -> float | None:
    """A percentile in ms; None without values (JSON has no NaN)."""
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def summarize(timelines: list[list[dict]], sessions: int, speculation: bool, counters: dict | None = None) -> dict:
    """One configuration's row from its sessions' timelines."""
    per = [session_metrics(t) for t in timelines]
    merged = {key: [x for m in per for x in m[key]] for key in ("latencies", "barge_to_last_audio",
                                                                 "barge_to_cancelled", "failures")}
    turns, speculative = sum(m["turns"] for m in per), sum(m["speculative"] for m in per)
    row = {"sessions": sessions, "speculation": speculation, "turns": turns,
           "answered": len(merged["latencies"]), "responses": sum(m["responses"] for m in per),
           "speculative_responses": speculative,
           "speculative_commit_rate": round(speculative / turns, 3) if turns else None,
           "latency_ms": {"p50": _ms(merged["latencies"], 50), "p95": _ms(merged["latencies"], 95)},
           "barge_in_to_last_audio_ms": {"p50": _ms(merged["barge_to_last_audio"], 50),
                                         "max": _ms(merged["barge_to_last_audio"], 100)},
           "barge_in_to_cancelled_ms": {"p50": _ms(merged["barge_to_cancelled"], 50),
                                        "max": _ms(merged["barge_to_cancelled"], 100)},
           "barge_ins": len(merged["barge_to_cancelled"]), "barge_in_tries": sum(m["barge_in_tries"] for m in per),
           "failures": dict(collections.Counter(merged["failures"]))}
    if counters is not None:
        row["server"] = {"speculative_committed": counters.get("stepaudio_realtime_replies_total:committed", 0.0),
                         "speculative_discarded": counters.get("stepaudio_realtime_replies_total:discarded", 0.0),
                         "discarded_worker_s": round(counters.get(
                             "stepaudio_realtime_discarded_reply_seconds_total", 0.0), 2)}
    return row


def _pair(values: dict, low: str, high: str) -> str:
    def one(v):
        return "—" if v is None else f"{v:.0f}"
    return f"{one(values[low])} / {one(values[high])}"


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (the README's)."""
    lines = ["| sessions | speculation | turns (answered) | end of speech → first audio delta p50 / p95 (ms) | "
             "speculative commit rate | barge-in → last audio delta p50 / max (ms) | barge-in → cancelled p50 / max "
             "(ms), cancelled / tried | server: speculative committed / discarded | failures |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = "—" if r["speculative_commit_rate"] is None else f"{r['speculative_commit_rate']:.2f}"
        server = r.get("server")
        counts = (f"{server['speculative_committed']:.0f} / {server['speculative_discarded']:.0f}"
                  if server else "—")
        lines.append(f"| {r['sessions']} | {'on' if r['speculation'] else 'off'} | {r['turns']} ({r['answered']}) | "
                     f"{_pair(r['latency_ms'], 'p50', 'p95')} | {rate} ({r['speculative_responses']}) | "
                     f"{_pair(r['barge_in_to_last_audio_ms'], 'p50', 'max')} | "
                     f"{_pair(r['barge_in_to_cancelled_ms'], 'p50', 'max')}, {r['barge_ins']} / {r['barge_in_tries']} | "
                     f"{counts} | "
                     f"{sum(r['failures'].values())} |")
    return "\n".join(lines)


# ---- driving sessions ------------------------------------------------------------------------------------------------
class OpenAIStream:
    """The gateway's ``/v1/realtime`` through the ``openai`` SDK's (sync) beta realtime client; raw events go to
    ``arrived`` with their arrival time (a reader thread)."""

    def __init__(self, gateway_url: str, api_key: str, rate: int, speculation: bool, seed: int, tokens: int,
                 tts_tokens: int):
        from openai import OpenAI

        client = OpenAI(api_key=api_key, base_url=gateway_url + "/v1",
                        websocket_base_url=gateway_url.replace("http://", "ws://", 1) + "/v1")
        self.manager = client.beta.realtime.connect(model="step-audio")
        self.connection = self.manager.enter()
        session = {"turn_detection": TURN_DETECTION, "seed": seed, "speculation": speculation,
                   "max_response_output_tokens": tokens, "max_speech_tokens": tts_tokens}
        if rate != OPENAI_RATE:
            session["sample_rate"] = rate
        self.connection.session.update(session=session)
        self.arrived: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while True:
                data = json.loads(self.connection.recv_bytes())
                self.arrived.put(slim(data.get("type", ""), data, time.monotonic()))
        except Exception:  # noqa: BLE001 - the socket closed: the session is over
            pass

    def send(self, chunk: np.ndarray, end: bool = False) -> None:
        if chunk.size:
            pcm = (np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()
            self.connection.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
        if end:
            self.connection.send({"type": "session.close"})  # an extension; closing the socket would do too

    def events(self) -> list[dict]:
        out = []
        while not self.arrived.empty():
            out.append(self.arrived.get_nowait())
        return out

    def close(self) -> None:
        self.connection.close()


class NativeStream:
    """``realtime_session`` over gRPC (``TritonRealtimeSession``), events slimmed as ``OpenAIStream``'s."""

    def __init__(self, url: str, rate: int, speculation: bool, seed: int, tokens: int, tts_tokens: int):
        from clients.realtime_client import TritonRealtimeSession

        self.s = TritonRealtimeSession(url, rate, seed=seed, speculation=speculation, max_new_tokens=tokens,
                                       tts_max_new_tokens=tts_tokens)

    def send(self, chunk: np.ndarray, end: bool = False) -> None:
        self.s.send(chunk, end)

    def events(self) -> list[dict]:
        return [slim(e.type, e.data, e.at) for e in self.s.events()]

    def close(self) -> None:
        self.s.close()


class PacedSession:
    """A session streamed at real time; its timeline holds the server's events and the bench's marks."""

    def __init__(self, target, rate: int, speculation: bool, seed: int, tokens: int, tts_tokens: int):
        if isinstance(target, tuple):  # (gateway url, api key): the OpenAI protocol
            self.s = OpenAIStream(*target, rate, speculation, seed, tokens, tts_tokens)
        else:
            self.s = NativeStream(target, rate, speculation, seed, tokens, tts_tokens)
        self.rate, self.timeline = rate, []
        self.due = time.monotonic()

    def mark(self, kind: str, at: float) -> None:
        self.timeline.append({"type": kind, "at": at})

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
            self.timeline += self.s.events()
        return left

    def silence_until(self, predicate, max_seconds: float = 60.0, start: int = 0):
        """Stream silence in real time until an event from index ``start`` on satisfies ``predicate``."""
        deadline, checked = time.monotonic() + max_seconds, start
        while time.monotonic() < deadline:
            for event in self.timeline[checked:]:
                if predicate(event):
                    return event
            checked = len(self.timeline)
            self.send(np.zeros(int(self.rate * CHUNK_SECONDS), np.float32))
        return None


def clip(rate: int) -> tuple[np.ndarray, int, int, int]:
    """The first 1.6 s of the shipped espeak-ng clip at ``rate``, with its first/last speech sample."""
    wave, file_rate = sf.read(DATA / "speech_en_16k.wav", dtype="float32")
    wave = wave[: int(1.6 * file_rate)]
    if rate != file_rate:
        import soxr

        wave = soxr.resample(wave, file_rate, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(wave) > LEVEL)
    return wave, rate, int(loud[0]), int(loud[-1]) + 1


def _ended(event: dict) -> bool:
    return event["type"] == "response.done"


def run_session(target, speculation: bool, turns: int, index: int, tokens: int, tts_tokens: int) -> list[dict]:
    """``turns`` scripted turns and a barge-in turn; the session's timeline."""
    wave, rate, first, last = clip(OPENAI_RATE if isinstance(target, tuple) else 16000)
    session = PacedSession(target, rate, speculation, 100 + index, tokens, tts_tokens)
    pause = np.zeros(int(0.3 * rate), np.float32)
    try:
        session.send(np.zeros(int(0.3 * rate), np.float32))
        for turn in range(turns + 1):
            session.mark(TURN_START, time.monotonic())
            begin = len(session.timeline)
            if turn % 2:  # a pause inside the turn: a speculative reply starts and is discarded
                session.send(wave[: int(0.8 * rate)])
                session.send(pause)
            session.send(wave[:last])
            session.mark(SPEECH_END, session.due - CHUNK_SECONDS)  # the chunk with the last speech sample was due then
            session.send(wave[last:])
            heard = session.silence_until(lambda e: e["type"] in REPLY_OUTCOMES, start=begin)
            if heard is None or heard["type"] != "response.audio.delta":
                continue
            if turn == turns:  # the barge-in turn: speak over the reply as soon as it is heard
                onset_sent = session.send(wave[:first + int(0.02 * rate)]) - CHUNK_SECONDS
                session.mark(BARGE_ONSET, onset_sent)
                session.send(wave[first + int(0.02 * rate):])
                rid = heard["response_id"]
                session.silence_until(lambda e, rid=rid: _ended(e) and e["response_id"] == rid, 30, start=begin)
                session.mark(TURN_START, time.monotonic())  # the interruption's own reply is not a measured turn
                session.silence_until(lambda e, rid=rid: _ended(e) and e["response_id"] != rid, 60, start=begin)
            else:
                session.silence_until(_ended, start=begin)
        session.s.send(np.zeros(0, np.float32), end=True)
        time.sleep(0.5)
        session.timeline += session.s.events()
    finally:
        session.s.close()
    return session.timeline


def counters(metrics_url: str | None) -> dict[str, float] | None:
    if not metrics_url:
        return None
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    values: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(stepaudio_realtime_\w+)\{([^}]*)\} (\S+)$", text, re.M):
        outcome = re.search(r'outcome="(\w+)"', labels)
        key = name + (f":{outcome[1]}" if outcome else "")
        values[key] = values.get(key, 0.0) + float(value)
    return values


def measure(target, metrics_url: str | None, concurrency: int, speculation: bool, turns: int, tokens: int,
            tts_tokens: int) -> dict:
    before = counters(metrics_url)
    timelines: list[list[dict]] = [[] for _ in range(concurrency)]
    crashed: list[str] = []

    def one(i):
        try:
            timelines[i] = run_session(target, speculation, turns, i, tokens, tts_tokens)
        except Exception as exc:  # noqa: BLE001 - a lost session is reported, the others go on
            crashed.append(f"session failed: {type(exc).__name__}: {str(exc)[:120]}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
        time.sleep(0.37)  # sessions out of phase, as real users
    for t in threads:
        t.join()
    after = counters(metrics_url)
    delta = None if before is None else {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    row = summarize(timelines, concurrency, speculation, delta)
    row["timelines"] = timelines  # main() keeps them in --out with --timelines
    for reason in crashed:
        row["failures"][reason] = row["failures"].get(reason, 0) + 1
    return row


def tiny_repository(out: Path) -> Path:
    """The tiny checkpoints rendered into ``out`` (cached by the renderer's digests)."""
    from export.render_repository import render
    from stepaudio.checkpoints import layout, write_tree

    checkpoints = out.with_name(out.name + "-checkpoints")
    if not (checkpoints / layout.SPEAKERS_DIR).is_dir():
        write_tree(checkpoints, "tiny", seed=0)
    render(checkpoints, out, checkpoints / layout.SPEAKERS_DIR, {})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-repository", type=Path, help="a rendered repository to serve")
    source.add_argument("--tiny", type=Path, help="render the tiny checkpoints here (cached) and serve them")
    source.add_argument("--url", help="a running server's gRPC address")
    parser.add_argument("--metrics-url", help="its metrics endpoint (with --url)")
    parser.add_argument("--protocol", choices=("openai", "native"), default="openai")
    parser.add_argument("--gateway-url", help="a running gateway (--protocol openai)")
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--turns", type=int, default=3, help="scripted turns per session, plus one barge-in turn")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-new-tokens", type=int, default=12, help="reply text tokens")
    parser.add_argument("--tts-max-new-tokens", type=int, default=60, help="speech ids per sentence")
    parser.add_argument("--out", type=Path, help="write the rows (and the run's settings) as JSON")
    parser.add_argument("--timelines", action="store_true", help="with --out: every session's timeline too")
    args = parser.parse_args(argv)
    from stepaudio_server.launcher import TritonServer

    server = gateway = None
    started = time.monotonic()
    if args.url:
        grpc_url, metrics_url = args.url, args.metrics_url
    else:
        repository = args.model_repository or tiny_repository(args.tiny)
        server = TritonServer(repository).start(timeout=600)
        grpc_url, metrics_url = server.grpc_url, server.metrics_url
    target = grpc_url
    try:
        if args.protocol == "openai":
            if not args.gateway_url:
                from gateway.process import GatewayProcess

                folder = Path(tempfile.mkdtemp(prefix="bench_realtime_"))
                gateway = GatewayProcess(grpc_url, folder / "voices.sqlite3", folder / "gateway.log",
                                         "--rate-per-minute", "100000", "--max-concurrent", "64", keys=(args.api_key,))
            target = (args.gateway_url or gateway.url, args.api_key)
        run_session(target, True, 0, 99, args.max_new_tokens, args.tts_max_new_tokens)  # warm-up
        rows = []
        timelines = []
        for concurrency in args.concurrency:
            for speculation in (False, True):
                rows.append(measure(target, metrics_url, concurrency, speculation, args.turns, args.max_new_tokens,
                                    args.tts_max_new_tokens))
                timelines.append(rows[-1].pop("timelines"))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                for reason, count in rows[-1]["failures"].items():
                    print(f"<!-- {count} × {reason} -->", flush=True)
        print()
        print(table(rows))
        if args.out:
            settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
            args.out.write_text(json.dumps({"settings": settings, "wall_s": round(time.monotonic() - started, 1),
                                            "rows": rows, **({"timelines": timelines} if args.timelines else {})},
                                           indent=2, allow_nan=False) + "\n")
    finally:
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
