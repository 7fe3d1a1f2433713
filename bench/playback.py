"""Continuity of a streamed reply as a listener hears it: playback starts when the first audio arrives and plays
without pause; a chunk that arrives after the audio before it has run out is an *underrun* (the listener hears a
gap). Pure functions over (arrival time, samples) pairs, shared by the streaming benches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Continuity:
    first_audio_s: float  # request → first audio (the first chunk with samples)
    underruns: int  # chunks that arrived after the audio before them had finished playing
    worst_gap_s: float  # the longest silence a listener heard mid-reply (0 with no underrun)
    audio_s: float


def continuity(arrivals: list[tuple[float, int]], rate: int) -> Continuity:
    """``arrivals``: (seconds since the request, samples) for every chunk in order; empty chunks are skipped.
    A gap makes the rest of the reply play later: playback resumes when the late chunk arrives."""
    audible = [(t, n) for t, n in arrivals if n > 0]
    if not audible:
        return Continuity(float("nan"), 0, 0.0, 0.0)
    first = audible[0][0]
    plays_until = first + audible[0][1] / rate  # when the audio received so far finishes playing
    underruns, worst = 0, 0.0
    for arrived, samples in audible[1:]:
        if arrived > plays_until:
            underruns += 1
            worst = max(worst, arrived - plays_until)
            plays_until = arrived
        plays_until += samples / rate
    return Continuity(first, underruns, worst, sum(n for _, n in audible) / rate)


def percentiles_ms(values: list[float], points=(50, 95)) -> dict[str, float]:
    """{"p50": ms, "p95": ms} of values in seconds."""
    finite = [v for v in values if np.isfinite(v)]
    return {f"p{p}": float(np.percentile(finite, p) * 1000) if finite else float("nan") for p in points}
