"""The GPU validation script says it skipped, and exits 0, where no CUDA GPU exists (it must never pretend to run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_vllm_step1.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run the script itself")
def test_gpu_script_skips_without_a_gpu(tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SKIPPED: no CUDA GPU")
    assert not out.exists()  # nothing measured, nothing written
