"""Helpers the test packages share (conftest files hold fixtures only; tests import helpers from modules)."""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # pytest then runs fixture teardown, which stops the servers


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While a live-server fixture runs, SIGTERM (a CI timeout, ``kill``) ends the run through pytest's teardown
    instead of killing it with the servers still up; the previous handler comes back afterwards."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def attach_log_tails(item, report, fixture_names: tuple[str, ...], lines: int = 40) -> None:
    """A failed test's report carries the log tails of the server/gateway fixtures it used (CI keeps no temp folders)."""
    if report.failed and hasattr(item, "funcargs"):
        for name in fixture_names:
            process = item.funcargs.get(name)
            if process is not None:
                if exit_report := getattr(process, "exit_report", lambda: [])():
                    report.sections.append((f"{name} exited", "\n".join(exit_report)))
                report.sections.append((f"{name} log (last {lines} lines)", process.log_tail(lines)))
