"""One tiny tokenizer checkpoint (real layout, random weights) and its exported vq02 ONNX per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.tokenizer_onnx import export_vq02_encoder
from stepaudio.audio import load_audio
from stepaudio.checkpoints import layout
from stepaudio.testing.tokenizer import write_tokenizer
from stepaudio.tokenizer import AudioTokenizer

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tokenizer_ckpt")
    write_tokenizer(root, "tiny", seed=0)
    export_vq02_encoder(root / layout.TOKENIZER_DIR)
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(checkpoint_root) -> Path:
    return checkpoint_root / layout.TOKENIZER_DIR


@pytest.fixture(scope="session")
def onnx_tokenizer(tokenizer_dir) -> AudioTokenizer:
    return AudioTokenizer.from_checkpoint(tokenizer_dir, backend="onnx", threads=2)


@pytest.fixture(scope="session")
def torch_tokenizer(tokenizer_dir) -> AudioTokenizer:
    return AudioTokenizer.from_checkpoint(tokenizer_dir, backend="torch")


@pytest.fixture(scope="session")
def english():
    return load_audio(DATA / "speech_en_16k.wav")


@pytest.fixture(scope="session")
def chinese_8k():
    return load_audio(DATA / "speech_zh_8k.wav")
