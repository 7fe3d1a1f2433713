"""The fuzz campaign's machinery: send one generated request over a raw socket, judge the answer, and watch the
service (pids, restarts, readiness latency, a canary TTS request, RSS) from a parallel thread.

Used by the short seeded test (``tests/fuzz/test_campaign.py``) and the long run (``bench/fuzz_campaign.py``).
What counts as a failure is written down in docs/fuzzing.md; ``judge`` is that list as code.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h11

REQUEST_TIMEOUT_S = 15.0  # an answer (or a close) must come within this; longer is a hang
# Readiness must answer within this (the canary thread measures it). It catches a frozen event loop (the freezes
# of issue #23 lasted minutes); on a starved 2-core machine scheduling alone took up to 1.98 s (two CPU hogs
# beside the campaign, 2026-12-08), so a tighter bound measures the machine, not the front door.
READY_BOUND_S = 3.0
# The gateway's /metrics may gain this many lines (route × status label values; 421 after 100 000 requests, 273
# after 8000: bounded, as it must be when every made-up method or path falls into one label).
METRICS_GROWTH_LINES = 1000
MAX_RESPONSE_BYTES = 1 << 20  # streamed answers are read this far, then the socket is closed
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "/')
# The canary: a fixed-seed TTS request through the guard; the same audio must come back all campaign long.
CANARY_PATH = "/v2/models/ensemble_tts/generate"
CANARY_BODY = json.dumps({"TEXT": "你好，世界。", "SPEAKER": "Tingting", "SEED": 11, "MAX_NEW_TOKENS": 20}).encode()


@dataclass(frozen=True)
class FuzzRequest:
    """One generated request: the exact bytes for the wire, or WebSocket events for a well-formed session."""

    surface: str  # "guard" | "gateway" | "realtime"
    kind: str  # the generator family (per-family counts, failure classes)
    raw: bytes = b""  # HTTP request bytes, or a WebSocket handshake + frames for the raw realtime families
    well_framed: bool = True  # False: framing is broken on purpose (a 4xx or a close is the right answer)
    # False: valid framing, but outside what HTTP servers parse for applications (made-up methods, duplicated
    # singleton headers, lines over 8 kB): the HTTP library may refuse it with its own plain-text 400.
    strict: bool = True
    method: str = "GET"  # for reading the answer (HEAD has no body)
    ws_headers: tuple[tuple[str, str], ...] = ()  # well-formed realtime sessions (raw is empty)
    ws_messages: tuple[str | bytes, ...] = ()

    def describe(self, limit: int = 600) -> str:
        if self.raw:
            text = self.raw[:limit].decode("latin-1").encode("unicode_escape").decode()
            more = f" … (+{len(self.raw) - limit} bytes)" if len(self.raw) > limit else ""
            return f"[{self.surface}/{self.kind}] {text}{more}"
        messages = [m[:200] if isinstance(m, str) else f"<{len(m)} binary bytes>" for m in self.ws_messages]
        return f"[{self.surface}/{self.kind}] headers={list(self.ws_headers)} messages={messages}"


@dataclass
class Outcome:
    status: int | None = None  # None: no HTTP answer (closed, reset or timed out)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    closed: bool = False  # the server closed without an answer
    reset: bool = False  # ECONNRESET / EPIPE before any answer
    hang: bool = False
    bad_response: str = ""  # the answer was not valid HTTP (h11 says why)
    ws_close_code: int | None = None
    elapsed: float = 0.0


def exchange(host: str, port: int, request: FuzzRequest, timeout: float = REQUEST_TIMEOUT_S) -> Outcome:
    """Send the raw bytes and read one HTTP answer with h11 (the server's framing is checked, not trusted)."""
    start = time.monotonic()
    outcome = Outcome()
    deadline = start + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        outcome.reset = True
        return outcome
    with sock:
        try:
            sock.sendall(request.raw)
            if not request.well_framed:
                sock.shutdown(socket.SHUT_WR)  # the server sees the end, so a lying length cannot make it wait
        except socket.timeout:
            outcome.hang = True
        except OSError:
            pass  # the server may answer (413) and close before reading everything: read what it said
        _read_answer(sock, request.method, deadline, outcome, upgrade=request.surface == "realtime")
    outcome.elapsed = time.monotonic() - start
    return outcome


def _read_answer(sock: socket.socket, method: str, deadline: float, outcome: Outcome, upgrade: bool = False) -> None:
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)
    headers = [("Host", "x")] + ([("Connection", "Upgrade"), ("Upgrade", "websocket")] if upgrade else [])
    client.send(h11.Request(method="HEAD" if method == "HEAD" else "GET", target="/", headers=headers))
    client.send(h11.EndOfMessage())
    body = bytearray()
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            outcome.bad_response = str(exc)
            return
        if event is h11.NEED_DATA:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.hang = outcome.status is None
                return
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                outcome.hang = outcome.status is None
                return
            except (ConnectionResetError, BrokenPipeError):
                outcome.reset = outcome.status is None
                return
            if not data and outcome.status is None:
                outcome.closed = True  # closed before any answer (h11 would call it a protocol error)
                return
            client.receive_data(data)
            continue
        if event is h11.PAUSED:  # 101: what follows is WebSocket frames, read to the server's close
            outcome.body = _read_to_close(sock, client.trailing_data[0], deadline, outcome)
            return
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                outcome.status = 101
            continue
        if isinstance(event, h11.Response):
            outcome.status = event.status_code
            outcome.headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) >= MAX_RESPONSE_BYTES:
                break
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            if isinstance(event, h11.ConnectionClosed) and outcome.status is None:
                outcome.closed = True
            break
    outcome.body = bytes(body)


def _read_to_close(sock: socket.socket, data: bytes, deadline: float, outcome: Outcome) -> bytes:
    received = bytearray(data)
    while len(received) < MAX_RESPONSE_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome.hang = True
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            outcome.hang = True
            break
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    # A close frame from the server (unmasked, 2-byte code first) with 1011: an internal error.
    at = received.find(b"\x88")
    if at >= 0 and received[at + 2:at + 4] == b"\x03\xf3":
        outcome.ws_close_code = 1011
    return bytes(received)


def exchange_websocket(host: str, port: int, request: FuzzRequest, timeout: float = REQUEST_TIMEOUT_S) -> Outcome:
    """A well-formed session with the ``websockets`` client: handshake, the events, what comes back, close."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    start = time.monotonic()
    outcome = Outcome()
    headers = [(k, v) for k, v in request.ws_headers if k.lower() != "sec-websocket-protocol"]
    subprotocols = [v for k, v in request.ws_headers if k.lower() == "sec-websocket-protocol"] or None
    try:
        with connect(f"ws://{host}:{port}/v1/realtime", additional_headers=headers, subprotocols=subprotocols,
                     open_timeout=timeout, close_timeout=timeout, max_size=4 << 20) as ws:
            outcome.status = 101
            received = []
            try:
                for message in request.ws_messages:
                    ws.send(message)
                while time.monotonic() - start < timeout:
                    received.append(ws.recv(timeout=0.3))
            except TimeoutError:
                pass  # nothing more to say for now: a session waits for audio
            except ConnectionClosed as exc:
                outcome.ws_close_code = exc.rcvd.code if exc.rcvd else None
            outcome.body = b"\n".join(m.encode() if isinstance(m, str) else m for m in received)
    except InvalidStatus as exc:
        outcome.status = exc.response.status_code
        outcome.body = exc.response.body or b""
        outcome.headers = {k.lower(): v for k, v in exc.response.headers.raw_items()}
    except (TimeoutError, socket.timeout):
        outcome.hang = True
    except (InvalidHandshake, ConnectionClosed, OSError):
        outcome.closed = True
    outcome.elapsed = time.monotonic() - start
    if outcome.elapsed > timeout + 1.0:
        outcome.hang = True
    return outcome


def send(host: str, port: int, request: FuzzRequest, timeout: float = REQUEST_TIMEOUT_S) -> Outcome:
    if request.surface == "realtime" and not request.raw:
        return exchange_websocket(host, port, request, timeout)
    return exchange(host, port, request, timeout)


def judge(request: FuzzRequest, outcome: Outcome) -> str | None:
    """The symptom that breaks an invariant, or None (see docs/fuzzing.md)."""
    if outcome.hang:
        return "hang"
    if any(marker in outcome.body for marker in TRACEBACK_MARKERS):
        return "traceback in the answer"
    if outcome.bad_response and request.well_framed:
        return f"invalid HTTP answer ({outcome.bad_response[:60]})"  # ill-framed: a cut answer is a close
    if outcome.status is None:
        if request.well_framed:
            return "connection reset" if outcome.reset else "closed without an answer"
        return None  # an ill-framed request may be closed
    if outcome.status >= 500:
        return f"HTTP {outcome.status}"
    if outcome.ws_close_code == 1011:
        return "WebSocket closed with 1011 (internal error)"
    if request.surface == "realtime" and outcome.status == 101:
        if request.raw:
            return None  # malformed frames after the handshake: the server's close (not 1011) is the answer
        for line in outcome.body.split(b"\n"):
            if line and not _is_json_object(line):
                return "realtime event that is not a JSON object"
        return None
    if 400 <= outcome.status < 500 and request.method != "HEAD" and request.well_framed and request.strict:
        if not _is_json_error(outcome.body) and not _is_sse_error(outcome):
            return f"HTTP {outcome.status} without a JSON error body"
    if not (200 <= outcome.status < 500):
        return f"HTTP {outcome.status}"
    return None


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def _is_sse_error(outcome: Outcome) -> bool:
    """generate_stream answers in server-sent events, its errors too (``data: {"error": ...}``)."""
    if not outcome.headers.get("content-type", "").startswith("text/event-stream"):
        return False
    events = [line[5:].strip() for line in outcome.body.splitlines() if line.startswith(b"data:")]
    return bool(events) and all(_is_json_error(event) for event in events)


def _is_json_error(data: bytes) -> bool:
    try:
        value = json.loads(data)
    except ValueError:
        return False
    return isinstance(value, dict) and "error" in value


# ---- the service being fuzzed ---------------------------------------------------------------------------------

def tree_rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants (tritonserver's python stubs), from /proc."""
    total_kib, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/status") as status:
                total_kib += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def _get(url: str, timeout: float, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def canary_audio(guard_url: str, timeout: float = 120.0) -> bytes:
    """The canary's WAVEFORM as bytes (ensemble_tts through the guard, fixed seed)."""
    status, body = _get(f"http://{guard_url}{CANARY_PATH}", timeout, CANARY_BODY, {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"canary TTS answered {status}: {body[:300]!r}")
    wave = json.loads(body)["WAVEFORM"]
    return json.dumps(wave).encode()


@dataclass
class Stack:
    """What the campaign fuzzes and watches: the guard's and the gateway's addresses, the processes behind them
    (the server's is tritonserver itself, or the ``python -m stepaudio_server`` launcher that restarts it)."""

    guard_address: tuple[str, int]
    gateway_address: tuple[str, int]
    processes: dict[str, subprocess.Popen]  # "server", "gateway"
    server_log: Path  # tritonserver's log, with the supervisor's lines
    api_key: str
    launcher_output: Path | None = None  # the launcher's stderr, where it says "restarting the server"

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes.values())

    def rss_mib(self) -> dict[str, float]:
        return {name: tree_rss_mib(process.pid) for name, process in self.processes.items()}

    def restarts(self) -> list[str]:
        """Server restarts and stub deaths in the logs (a stub crash heals, but it is a crash)."""
        lines = []
        for path, marker in ((self.server_log, " died"), (self.launcher_output, "restarting the server")):
            if path is not None and Path(path).exists():
                lines += [line for line in Path(path).read_text(errors="replace").splitlines()
                          if marker in line and ("stepaudio.supervisor" in line or marker.startswith("restarting"))]
        return lines


class Watch(threading.Thread):
    """The parallel canary: readiness of both surfaces every ``ready_every`` s (latency bound), the canary TTS every
    ``canary_every`` s (same audio as the baseline), RSS (max kept), pids."""

    def __init__(self, stack: Stack, baseline_audio: bytes, ready_every: float = 0.5, canary_every: float = 10.0):
        super().__init__(name="fuzz-watch", daemon=True)
        self.stack, self.baseline_audio = stack, baseline_audio
        self.ready_every, self.canary_every = ready_every, canary_every
        self.stop_event = threading.Event()
        self.problems: queue.Queue[str] = queue.Queue()
        self.max_ready_s = {"guard": 0.0, "gateway": 0.0}
        self.max_canary_s = 0.0
        self.canaries = 0
        self.max_rss_mib: dict[str, float] = {}
        self.pids = stack.pids()
        self.restarts = len(stack.restarts())
        self.metrics_lines = self._metrics_lines()
        self.metrics_growth = 0

    def run(self) -> None:
        next_canary = time.monotonic() + self.canary_every
        guard = "http://%s:%d/v2/health/ready" % tuple(self.stack.guard_address)
        gateway = "http://%s:%d/health" % tuple(self.stack.gateway_address)
        while not self.stop_event.wait(self.ready_every):
            if not self.stack.alive() or self.stack.pids() != self.pids:
                self.problems.put("a process of the stack exited")
                return
            for name, url in (("guard", guard), ("gateway", gateway)):
                self._ready(name, url)
            for name, mib in self.stack.rss_mib().items():
                self.max_rss_mib[name] = max(self.max_rss_mib.get(name, 0.0), mib)
            if (restarts := len(self.stack.restarts())) != self.restarts:
                self.problems.put("the server restarted or a stub died (see its log)")
                self.restarts = restarts
            if time.monotonic() >= next_canary:
                self._canary()
                next_canary = time.monotonic() + self.canary_every
                growth = self._metrics_lines() - self.metrics_lines
                if growth > METRICS_GROWTH_LINES >= self.metrics_growth:
                    self.problems.put(f"gateway /metrics grew by more than {METRICS_GROWTH_LINES} lines")
                self.metrics_growth = max(self.metrics_growth, growth)

    def _metrics_lines(self) -> int:
        """Series the gateway exports (each distinct label value is one more, forever)."""
        try:
            _, body = _get("http://%s:%d/metrics" % tuple(self.stack.gateway_address), timeout=10)
        except OSError:
            return 0
        return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))

    def _ready(self, name: str, url: str) -> None:
        start = time.monotonic()
        try:
            status, _ = _get(url, timeout=10)
        except OSError as exc:
            self.problems.put(f"{name} readiness failed: {type(exc).__name__}")
            return
        took = time.monotonic() - start
        self.max_ready_s[name] = max(self.max_ready_s[name], took)
        if took > READY_BOUND_S:
            self.problems.put(f"{name} readiness took {took:.2f} s")
        if status != 200:
            self.problems.put(f"{name} readiness answered {status}")

    def _canary(self) -> None:
        start = time.monotonic()
        try:
            audio = canary_audio("%s:%d" % tuple(self.stack.guard_address))
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            self.problems.put(f"canary TTS failed: {exc}")
            return
        self.max_canary_s = max(self.max_canary_s, time.monotonic() - start)
        self.canaries += 1
        if audio != self.baseline_audio:
            self.problems.put("canary TTS audio changed")

    def drain(self) -> list[str]:
        items = []
        while True:
            try:
                items.append(self.problems.get_nowait())
            except queue.Empty:
                return items


@dataclass
class Tally:
    """Counts per surface and family, and the first example of every failure class."""

    tried: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    raw_examples: dict[str, bytes] = field(default_factory=dict)
    service: Counter = field(default_factory=Counter)  # watch problems (readiness, canary, processes)
    max_request_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: FuzzRequest, outcome: Outcome, symptom: str | None) -> None:
        with self.lock:
            self.tried[request.surface] += 1
            self.statuses[f"{request.surface} {outcome.status if outcome.status is not None else 'no answer'}"] += 1
            self.max_request_s = max(self.max_request_s, outcome.elapsed)
            if symptom is not None:
                key = f"{request.surface}/{request.kind}: {symptom}"
                self.failures[key] += 1
                if key not in self.examples:
                    detail = outcome.body[:300].decode(errors="replace")
                    self.examples[key] = f"{request.describe()}\n  → status {outcome.status}: {detail}"
                    self.raw_examples[key] = request.raw or json.dumps(
                        {"headers": request.ws_headers, "messages": [m if isinstance(m, str) else
                                                                     base64.b64encode(m).decode()
                                                                     for m in request.ws_messages]}).encode()

    def note_service(self, problem: str) -> None:
        with self.lock:
            self.service[problem] += 1

    @property
    def total(self) -> int:
        return sum(self.tried.values())

    def crashes(self) -> int:
        return sum(n for k, n in self.service.items() if "exited" in k or "died" in k)

    def hangs(self) -> int:
        return sum(n for k, n in self.failures.items() if k.endswith(": hang"))

    def server_errors(self) -> int:
        return sum(n for k, n in self.failures.items() if ": HTTP 5" in k)
