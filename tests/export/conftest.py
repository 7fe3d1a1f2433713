"""Exports once per session, from a decoder folder with the published structure at the smallest widths and depths.

The dynamo exporter's time grows with the number of graph nodes (≈20 ms each here), so the export tests use one
transformer block per U-Net stage, one encoder layer and one ResBlock kernel per HiFT stage; the exported code paths
are the same as for the published config (which the benchmark exports at full size). The vocoder is exported by its
CLI in a subprocess that runs while the flow exports in-process, using the second core.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from export.flow_onnx import export_flow_onnx
from stepaudio.decoder.checkpoint import load_flow, load_hift
from stepaudio.testing.decoder import write_decoder_dir
from tests.export.helpers import MICRO


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory):
    torch.set_num_threads(2)
    directory = tmp_path_factory.mktemp("micro_decoder")
    write_decoder_dir(directory, MICRO, seed=5)
    return directory


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def vocoder_export(micro_dir):
    out = micro_dir / "vocoder_cli.onnx"
    command = [sys.executable, "-m", "export.vocoder_onnx", "--decoder-dir", str(micro_dir), "--out", str(out)]
    process = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield process, out
    if process.poll() is None:
        process.kill()


@pytest.fixture(scope="session")
def flow_session(micro_dir, vocoder_export):
    return _session(export_flow_onnx(micro_dir))


@pytest.fixture(scope="session")
def vocoder_session(vocoder_export):
    process, out = vocoder_export
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-2000:]
    assert stdout.strip().splitlines()[-1] == str(out)
    return _session(out)


@pytest.fixture(scope="session")
def flow_module(micro_dir):
    return load_flow(micro_dir)


@pytest.fixture(scope="session")
def hift_module(micro_dir):
    return load_hift(micro_dir)
