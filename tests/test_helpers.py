import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import sigterm_interrupts


def test_sigterm_interrupts_only_inside_and_restores_the_previous_handler():
    def previous(signum, frame):
        raise AssertionError("the previous handler must not run inside")

    original = signal.signal(signal.SIGTERM, previous)
    try:
        with sigterm_interrupts():
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this sleep at the latest
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


def test_importing_the_fixtures_installs_no_sigterm_handler():
    # Only a running server fixture may take SIGTERM over; importing the conftest files must not.
    script = ("import signal, tests.conftest, tests.server.conftest, tests.gateway.conftest; "
              "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]
