"""Scripted real-time sessions against ``realtime_session``: speech is streamed faster than real time (the VAD and
the controller run on audio time), silence while waiting for the bot in real time, as a microphone would."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np

from clients.realtime_client import Event, TritonRealtimeSession
from tests.realtime.scripted import clip, speech_span

CHUNK_SECONDS = 0.1


class Driver:
    def __init__(self, server, rate: int, speed: float = 4.0, **options):
        self.session = TritonRealtimeSession(server.grpc_url, rate, **options)
        self.rate, self.speed = rate, speed
        self.sent = 0  # samples streamed so far
        self.events: list[tuple[float, Event]] = []  # (audio seconds sent when it arrived, event)
        self._due = time.monotonic()  # when the next chunk leaves (a microphone's pace, scaled)

    @property
    def audio_time(self) -> float:
        return self.sent / self.rate

    def _collect(self, timeout: float = 0.0) -> None:
        for event in self.session.events(timeout):
            self.events.append((self.audio_time, event))

    def stream(self, wave: np.ndarray, speed: float | None = None) -> None:
        step = int(CHUNK_SECONDS * self.rate)
        for i in range(0, wave.shape[0], step):
            chunk = wave[i:i + step].astype(np.float32)
            self._due = max(self._due, time.monotonic() - CHUNK_SECONDS)  # never catch up in a burst
            time.sleep(max(0.0, self._due - time.monotonic()))
            self.session.send(chunk)
            self._due += chunk.shape[0] / self.rate / (speed or self.speed)
            self.sent += chunk.shape[0]
            self._collect()

    def speech(self, seconds: float | None = None) -> tuple[float, float]:
        """The clip (or its first ``seconds``); returns its known speech span in session audio time."""
        wave = clip(self.rate)
        if seconds is not None:
            wave = wave[: int(seconds * self.rate)]
        start, end = speech_span(wave, self.rate)
        offset = self.audio_time
        self.stream(wave)
        return offset + start, offset + end

    def silence(self, seconds: float) -> None:
        self.stream(np.zeros(int(seconds * self.rate), np.float32))

    def until(self, predicate, max_seconds: float = 60.0) -> Event:
        """Stream silence in real time until an event satisfies ``predicate``."""
        checked = 0
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            for _, event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = len(self.events)
            self.stream(np.zeros(int(CHUNK_SECONDS * self.rate), np.float32), speed=1.0)
        raise AssertionError(f"no matching event in {max_seconds} s; got {[e.type for _, e in self.events]}")

    def end(self) -> None:
        self.session.send(np.zeros(0, np.float32), end=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e.type == "session.closed" for _, e in self.events):
            self._collect(timeout=0.5)
        self.session.close()

    def of_type(self, kind: str) -> list[Event]:
        return [e for _, e in self.events if e.type == kind]

    def audio(self, response_id: str) -> np.ndarray:
        parts = [e.waveform for _, e in self.events if e.type == "response.audio.delta" and e.data["response_id"] == response_id]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def counter(server, name: str, **labels) -> float:
    """A counter's value on the metrics endpoint (0 before its first increment)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^%s\{(.*)\} (\S+)$" % re.escape(name), line)
        if match and all(f'{k}="{v}"' in match[1] for k, v in labels.items()):
            total += float(match[2])
    return total
