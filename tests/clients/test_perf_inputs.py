"""perf_analyzer input files: every tensor's content fits its declared shape; batch dimension only where needed."""

from __future__ import annotations

import json

import numpy as np

from clients.perf_inputs import write


def test_perf_inputs_are_consistent(tmp_path):
    ensemble, stream = write(tmp_path, max_new_tokens=60)
    for path, lead in ((ensemble, [1]), (stream, [])):
        data = json.loads(path.read_text())["data"]
        assert len(data) >= 2
        for entry in data:
            assert set(entry) == {"TEXT", "SPEAKER", "SEED", "MAX_NEW_TOKENS"}
            for tensor in entry.values():
                assert tensor["shape"] == lead + [1]
                assert len(tensor["content"]) == int(np.prod(tensor["shape"]))
        assert len({e["SEED"]["content"][0] for e in data}) == len(data)
