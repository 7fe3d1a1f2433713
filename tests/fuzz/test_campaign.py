"""The short seeded fuzz campaign (issue #23): a fixed seed, a few thousand generated hostile requests against the
guard, the gateway and ``/v1/realtime``, every invariant of docs/fuzzing.md checked. The long run is
``bench/fuzz_campaign.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fuzz.campaign import run_campaign
from tests.fuzz.harness import READY_BOUND_S

pytestmark = pytest.mark.server

SEED = 20261207
EXAMPLES = int(os.environ.get("STEPAUDIO_FUZZ_EXAMPLES", "8000"))  # ~60 s on a 2-core machine
# RSS may grow this much over the campaign's start (MiB): the server's stubs run the few valid inference requests
# the grammar draws; the gateway only decodes uploads within its 600 kB cap.
RSS_GROWTH_MIB = {"server": 1024.0, "gateway": 300.0}


def test_seeded_fuzz_campaign_keeps_every_invariant(fuzz_stack, tmp_path):
    summary = run_campaign(fuzz_stack, EXAMPLES, SEED, max_failures=200, canary_every=5.0)
    report = summary.as_dict()
    out = Path(os.environ.get("STEPAUDIO_FUZZ_SUMMARY", tmp_path / "fuzz-summary.json"))
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    details = "\n".join(f"{key} (×{count})\n  {summary.tally.examples[key]}"
                        for key, count in summary.tally.failures.most_common())
    assert summary.tally.total >= 0.9 * EXAMPLES or summary.stopped_early, report
    assert not summary.stopped_early, summary.stopped_early + "\n" + details
    assert not summary.tally.failures, f"{sum(summary.tally.failures.values())} failing requests:\n{details}"
    assert not summary.tally.service, dict(summary.tally.service)
    assert summary.canary_unchanged and summary.canaries >= 1
    assert max(summary.max_ready_s.values()) <= READY_BOUND_S
    for name, growth in RSS_GROWTH_MIB.items():
        assert summary.rss_max_mib[name] <= summary.rss_before_mib[name] + growth, report
