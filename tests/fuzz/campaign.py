"""One fuzz campaign: Hypothesis draws ``examples`` requests from the grammar (tests/fuzz/strategies.py) with a
fixed seed; worker threads send them to their surface and judge each answer while ``Watch`` checks the service.
The short test and ``bench/fuzz_campaign.py`` both call ``run_campaign``."""

from __future__ import annotations

import queue
import threading
import time
import warnings
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed

from tests.fuzz.harness import Outcome, Stack, Tally, Watch, canary_audio, judge, send
from tests.fuzz.strategies import requests

RECOVERY_S = 60.0  # after a hang, how long the service may take to answer readiness again before the run stops


class _Stop(Exception):
    """Ends generation early (the stack is down, or the failure budget is spent)."""


@dataclass
class Summary:
    examples: int
    seed: int
    seconds: float = 0.0
    tally: Tally = field(default_factory=Tally)
    rss_before_mib: dict[str, float] = field(default_factory=dict)
    rss_after_mib: dict[str, float] = field(default_factory=dict)
    rss_max_mib: dict[str, float] = field(default_factory=dict)
    max_ready_s: dict[str, float] = field(default_factory=dict)
    max_canary_s: float = 0.0
    canaries: int = 0
    canary_unchanged: bool = True
    metrics_growth_lines: int = 0
    stopped_early: str = ""

    def as_dict(self) -> dict:
        tally = self.tally
        return {
            "requests_tried": tally.total, "examples_asked": self.examples, "seed": self.seed,
            "seconds": round(self.seconds, 1), "requests_per_s": round(tally.total / max(self.seconds, 1e-9), 1),
            "crashes": tally.crashes(), "hangs": tally.hangs(), "http_5xx": tally.server_errors(),
            "failures": dict(tally.failures), "service_problems": dict(tally.service),
            "per_surface": dict(tally.tried), "statuses": dict(tally.statuses),
            "max_request_s": round(tally.max_request_s, 2),
            "max_ready_s": {k: round(v, 3) for k, v in self.max_ready_s.items()},
            "max_canary_s": round(self.max_canary_s, 2), "canaries": self.canaries,
            "canary_unchanged": self.canary_unchanged, "gateway_metrics_growth_lines": self.metrics_growth_lines,
            "rss_before_mib": _rounded(self.rss_before_mib), "rss_after_mib": _rounded(self.rss_after_mib),
            "rss_max_mib": _rounded(self.rss_max_mib), "stopped_early": self.stopped_early,
            "examples": tally.examples,
        }

    def failed(self) -> bool:
        return bool(self.tally.failures or self.tally.service or not self.canary_unchanged or self.stopped_early)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in values.items()}


def _wait_ready(stack: Stack, timeout: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    url = "http://%s:%d/v2/health/ready" % tuple(stack.guard_address)
    while time.monotonic() < deadline and stack.alive():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def run_campaign(stack: Stack, examples: int, seed: int, workers: int = 3, max_failures: int | None = None,
                 canary_every: float = 10.0, progress=None) -> Summary:
    """Send ``examples`` generated requests; every answer judged, the service watched all along."""
    summary = Summary(examples, seed)
    baseline = canary_audio("%s:%d" % tuple(stack.guard_address))
    summary.rss_before_mib = stack.rss_mib()
    watch = Watch(stack, baseline, canary_every=canary_every)
    tally = summary.tally
    work: queue.Queue = queue.Queue(maxsize=workers * 2)
    stop = threading.Event()

    def worker() -> None:
        while (request := work.get()) is not None:
            if stop.is_set():
                continue
            address = stack.guard_address if request.surface == "guard" else stack.gateway_address
            try:
                outcome = send(*address, request)
                symptom = judge(request, outcome)
            except Exception as exc:  # noqa: BLE001 - a harness bug is reported like a failure, the worker lives on
                outcome, symptom = Outcome(), f"harness error {type(exc).__name__}: {exc}"
            tally.record(request, outcome, symptom)
            if not stack.alive():
                summary.stopped_early = f"a process exited after: {request.describe(300)}"
                stop.set()
            elif symptom == "hang" and not _wait_ready(stack, RECOVERY_S):
                summary.stopped_early = f"not ready {RECOVERY_S:.0f} s after a hang on: {request.describe(300)}"
                stop.set()
            if max_failures is not None and sum(tally.failures.values()) >= max_failures:
                stop.set()

    threads = [threading.Thread(target=worker, name=f"fuzz-{i}", daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    watch.start()
    start = time.monotonic()
    sent = 0

    @settings(max_examples=examples, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @fixed_seed(seed)
    @given(requests(stack.api_key))
    def generate(request) -> None:
        nonlocal sent
        while not stop.is_set():
            if not any(thread.is_alive() for thread in threads):
                stop.set()
                summary.stopped_early = "every sending thread died"
                break
            try:
                work.put(request, timeout=1)
                break
            except queue.Full:
                continue
        if stop.is_set():
            raise _Stop
        sent += 1
        for problem in watch.drain():
            tally.note_service(problem)
        if progress is not None and sent % 1000 == 0:
            progress(sent, summary, time.monotonic() - start)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Hypothesis warns about the long reprs of the big-body strategies
            generate()
    except _Stop:
        pass
    finally:
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join(60)
        summary.seconds = time.monotonic() - start
        time.sleep(1.0)  # the last readiness samples
        watch.stop_event.set()
        watch.join(30)
        for problem in watch.drain():
            tally.note_service(problem)
    if stack.alive():
        try:
            summary.canary_unchanged = canary_audio("%s:%d" % tuple(stack.guard_address)) == baseline
        except (OSError, RuntimeError, ValueError, KeyError):
            summary.canary_unchanged = False
        summary.rss_after_mib = stack.rss_mib()
    summary.rss_max_mib = watch.max_rss_mib
    summary.metrics_growth_lines = watch.metrics_growth
    summary.max_ready_s, summary.max_canary_s, summary.canaries = watch.max_ready_s, watch.max_canary_s, watch.canaries
    if any("changed" in problem for problem in tally.service):
        summary.canary_unchanged = False
    return summary
