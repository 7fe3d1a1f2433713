"""Tiny Step1 checkpoints (real layout and vocabulary, small widths) written once per test session."""

from __future__ import annotations

import pytest
import torch

from stepaudio.checkpoints.layout import CHAT_DIR, TTS_DIR
from stepaudio.llm.tokenizer import Step1Tokenizer
from stepaudio.llm.weights import load_step1
from stepaudio.testing.llm import write_llm


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # The build machine's 2 cores are shared: a second intra-op thread mostly waits for a busy core.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def llm_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_checkpoints")
    write_llm(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def tts_dir(llm_root):
    return llm_root / TTS_DIR


@pytest.fixture(scope="session")
def chat_dir(llm_root):
    return llm_root / CHAT_DIR


@pytest.fixture(scope="session")
def tts_model(tts_dir):
    return load_step1(tts_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def chat_model(chat_dir):
    return load_step1(chat_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def tokenizer(tts_dir):
    return Step1Tokenizer.from_pretrained(tts_dir)

