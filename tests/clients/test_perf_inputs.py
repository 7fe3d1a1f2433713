"""perf_analyzer input files: every tensor's content fits its shape, which never includes the batch dimension
(perf_analyzer adds it with ``-b``), and every request caps its generation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients.perf_inputs import write


def test_perf_inputs_are_consistent(tmp_path):
    for path in write(tmp_path, max_new_tokens=60):
        data = json.loads(path.read_text())["data"]
        assert len(data) >= 2
        for entry in data:
            assert set(entry) == {"TEXT", "SPEAKER", "SEED", "MAX_NEW_TOKENS"}
            for tensor in entry.values():
                assert tensor["shape"] == [1]
                assert len(tensor["content"]) == int(np.prod(tensor["shape"]))
            assert entry["MAX_NEW_TOKENS"]["content"] == [60]
        assert len({e["SEED"]["content"][0] for e in data}) == len(data)


def test_generation_is_always_capped(tmp_path):
    for path in write(tmp_path):
        assert all(0 < e["MAX_NEW_TOKENS"]["content"][0] <= 4096 for e in json.loads(path.read_text())["data"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        write(tmp_path, max_new_tokens=0)
