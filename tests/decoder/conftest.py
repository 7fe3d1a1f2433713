"""One tiny decoder tree (speech + music folders) per test session."""

from __future__ import annotations

import os

import pytest
import torch

from stepaudio.checkpoints import layout
from stepaudio.decoder import Token2Wav
from stepaudio.testing.decoder import write_decoder


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(int(os.environ.get("STEPAUDIO_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def decoder_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder_tree")
    write_decoder(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def speech_dir(decoder_root):
    return decoder_root / layout.TTS_DIR / layout.SPEECH_DECODER_DIR


@pytest.fixture(scope="session")
def music_dir(decoder_root):
    return decoder_root / layout.TTS_DIR / layout.MUSIC_DECODER_DIR


@pytest.fixture(scope="session")
def token2wav(speech_dir):
    return Token2Wav.from_checkpoint(speech_dir)
