"""The decoder writer's tree and strict loading of flow.pt / hift.pt."""

from __future__ import annotations

import shutil

import pytest
import torch

from stepaudio.checkpoints import layout
from stepaudio.decoder.checkpoint import load_config, load_flow, load_hift
from stepaudio.testing.decoder import write_decoder


def test_writer_emits_the_published_file_set(decoder_root, speech_dir, music_dir):
    for folder in (speech_dir, music_dir):
        names = {p.name for p in folder.iterdir()}
        assert {layout.DECODER_YAML, layout.FLOW_WEIGHTS, layout.HIFT_WEIGHTS, layout.DECODER_VERSION_MARKER} <= names
        assert (folder / layout.DECODER_VERSION_MARKER).stat().st_size == 0
        state = torch.load(folder / layout.FLOW_WEIGHTS, weights_only=True)
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    speech = torch.load(speech_dir / layout.FLOW_WEIGHTS, weights_only=True)
    music = torch.load(music_dir / layout.FLOW_WEIGHTS, weights_only=True)
    assert speech.keys() == music.keys()
    assert not torch.equal(speech["input_embedding.weight"], music["input_embedding.weight"])
    with pytest.raises(ValueError, match="variant"):
        write_decoder(decoder_root / "unused", "huge", 0)


def test_both_folders_load_strictly_with_old_weight_norm_keys(speech_dir, music_dir):
    for folder in (speech_dir, music_dir):
        config = load_config(folder)
        flow, hift = load_flow(folder, config), load_hift(folder, config)
        assert not flow.training and not hift.training
        keys = set(hift.state_dict())
        assert {"conv_pre.weight_g", "conv_pre.weight_v", "ups.1.weight_g", "f0_predictor.condnet.0.weight_v"} <= keys
        assert "conv_pre.weight" not in keys


def _tampered(tmp_path, speech_dir, edit):
    folder = tmp_path / "tampered"
    shutil.copytree(speech_dir, folder)
    state = torch.load(folder / layout.FLOW_WEIGHTS, weights_only=True)
    edit(state)
    torch.save(state, folder / layout.FLOW_WEIGHTS)
    return folder


def test_renamed_key_fails_naming_both_keys(tmp_path, speech_dir):
    def rename(state):
        state["encoder.encoders.0.self_attn.pos_bias_w"] = state.pop("encoder.encoders.0.self_attn.pos_bias_u")

    folder = _tampered(tmp_path, speech_dir, rename)
    with pytest.raises(ValueError, match="pos_bias_u") as excinfo:
        load_flow(folder)
    assert "pos_bias_w" in str(excinfo.value)


def test_wrong_shape_fails_naming_the_key(tmp_path, speech_dir):
    def reshape(state):
        state["encoder_proj.weight"] = torch.zeros(81, state["encoder_proj.weight"].shape[1])

    with pytest.raises(ValueError, match=r"encoder_proj\.weight: file \(81"):
        load_flow(_tampered(tmp_path, speech_dir, reshape))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the old API is the point of comparison
def test_weight_norm_matches_the_old_torch_api(speech_dir):
    hift = load_hift(speech_dir)
    conv = hift.resblocks[2].convs1[1]
    reference = torch.nn.utils.weight_norm(
        torch.nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, dilation=conv.dilation)
    )
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(1, conv.in_channels, 40)
    with torch.no_grad():
        assert torch.equal(conv(x), reference(x))
    up = hift.ups[0]
    reference_up = torch.nn.utils.weight_norm(
        torch.nn.ConvTranspose1d(up.in_channels, up.out_channels, up.kernel_size, up.stride, up.padding)
    )
    reference_up.load_state_dict(up.state_dict())
    x = torch.randn(1, up.in_channels, 12)
    with torch.no_grad():
        assert torch.equal(up(x), reference_up(x))
