"""flow_decoder.onnx and vocoder.onnx: the documented I/O contract and parity with PyTorch over batches and lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.flow_onnx import main as flow_main
from export.vocoder_onnx import main as vocoder_main
from stepaudio.checkpoints import layout
from stepaudio.decoder import OnnxToken2Wav, Token2Wav
from stepaudio.decoder.checkpoint import load_config
from stepaudio.decoder.token2wav import FLOW_INPUTS, VOCODER_INPUTS
from tests.decoder.inputs import make_tokens, make_voice


def _flow_inputs(flow_config, rows: list[tuple[int, int, int]], seed: int) -> dict[str, np.ndarray]:
    """rows: (target ids, prompt ids, prompt frames) per request, padded as a serving caller would."""
    rng = np.random.default_rng(seed)
    n_tok = max(r[0] for r in rows)
    n_prompt = max(r[1] for r in rows)
    n_pmel = max(r[2] for r in rows)
    width = n_pmel + flow_config.mel_frames_for_tokens(n_tok)
    batch = len(rows)
    inputs = {
        "tokens": rng.integers(0, 5120, (batch, n_tok)),
        "token_lens": np.array([r[0] for r in rows]),
        "prompt_tokens": rng.integers(0, 5120, (batch, n_prompt)),
        "prompt_token_lens": np.array([r[1] for r in rows]),
        "prompt_mel": rng.standard_normal((batch, n_pmel, 80)).astype(np.float32) - 4,
        "prompt_mel_lens": np.array([r[2] for r in rows]),
        "speaker_embedding": rng.standard_normal((batch, 192)).astype(np.float32),
        "noise": rng.standard_normal((batch, 80, width)).astype(np.float32),
    }
    return {k: (v.astype(np.int64) if v.dtype.kind == "i" else v) for k, v in inputs.items()}


def test_flow_io_contract(flow_session):
    inputs = {i.name: (i.type, i.shape) for i in flow_session.get_inputs()}
    assert tuple(inputs) == FLOW_INPUTS
    assert inputs["tokens"] == ("tensor(int64)", ["batch", "n_tokens"])
    assert inputs["prompt_mel"] == ("tensor(float)", ["batch", "n_prompt_frames", 80])
    assert inputs["noise"] == ("tensor(float)", ["batch", 80, "n_frames"])
    assert all(inputs[n] == ("tensor(int64)", ["batch"]) for n in FLOW_INPUTS if n.endswith("_lens"))
    outputs = {o.name: (o.type, o.shape) for o in flow_session.get_outputs()}
    assert outputs["mel"][0] == "tensor(float)" and outputs["mel"][1][:2] == ["batch", 80]
    assert outputs["mel_lens"] == ("tensor(int64)", ["batch"])


@pytest.mark.parametrize(
    "rows",
    [
        [(40, 0, 0)],  # no prompt
        [(1, 0, 0)],  # shortest request: 2 mel frames
        [(17, 9, 20), (11, 4, 7), (17, 9, 20)],  # ragged batch
        [(6, 3, 7), (9, 0, 0)],  # one row with a prompt, one without
    ],
)
def test_flow_onnx_matches_torch(flow_session, flow_module, rows):
    inputs = _flow_inputs(flow_module.config, rows, len(rows))
    mel, mel_lens = flow_session.run(None, inputs)
    with torch.no_grad():
        ref_mel, ref_lens = flow_module(*(torch.from_numpy(inputs[n]) for n in FLOW_INPUTS))
    assert mel_lens.tolist() == ref_lens.tolist() == [flow_module.config.mel_frames_for_tokens(r[0]) for r in rows]
    assert mel.shape == tuple(ref_mel.shape)
    assert np.abs(ref_mel.numpy()).max() > 0.1
    np.testing.assert_allclose(mel, ref_mel.numpy(), rtol=1e-4, atol=1e-4)


def test_vocoder_io_contract(vocoder_session):
    inputs = {i.name: (i.type, i.shape) for i in vocoder_session.get_inputs()}
    assert tuple(inputs) == VOCODER_INPUTS
    assert inputs["mel"] == ("tensor(float)", ["batch", 80, "n_frames"])
    assert inputs["mel_lens"] == ("tensor(int64)", ["batch"])
    assert inputs["source_phase"] == ("tensor(float)", ["batch", 9])
    assert inputs["source_noise"][0] == "tensor(float)" and inputs["source_noise"][1][:2] == ["batch", 9]
    outputs = {o.name: (o.type, o.shape) for o in vocoder_session.get_outputs()}
    assert {name: kind for name, (kind, _) in outputs.items()} == {
        "wave": "tensor(float)", "wave_lens": "tensor(int64)", "f0": "tensor(float)"
    }
    assert outputs["f0"][1] == ["batch", "n_frames"]


@pytest.mark.parametrize("frames", [[1], [20, 20, 13], [7, 2]])
def test_vocoder_onnx_matches_torch(vocoder_session, hift_module, frames):
    rng = np.random.default_rng(sum(frames))
    batch, width = len(frames), max(frames)
    inputs = {
        "mel": rng.standard_normal((batch, 80, width)).astype(np.float32) - 4,
        "mel_lens": np.array(frames, np.int64),
        "source_phase": rng.uniform(-np.pi, np.pi, (batch, 9)).astype(np.float32),
        "source_noise": rng.standard_normal((batch, 9, 256 * width)).astype(np.float32),
    }
    wave, wave_lens, f0 = vocoder_session.run(None, inputs)
    with torch.no_grad():
        ref_wave, ref_lens, ref_f0 = hift_module(*(torch.from_numpy(inputs[n]) for n in VOCODER_INPUTS))
    assert wave_lens.tolist() == ref_lens.tolist() == [256 * f for f in frames]
    assert np.abs(ref_wave.numpy()).max() > 1e-3
    np.testing.assert_allclose(wave, ref_wave.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(ref_f0.numpy()).max() > 0
    np.testing.assert_allclose(f0, ref_f0.numpy(), rtol=1e-4, atol=1e-4)
    for row, n in enumerate(frames):
        assert not f0[row, n:].any()  # zero past mel_lens


def test_onnx_runner_matches_torch_offline_and_streaming(micro_dir, flow_session, vocoder_session, vocoder_export):
    """The ORT runner (what the served flow_decoder / vocoder compute) gives the torch runner's audio, streamed too."""
    _, vocoder_path = vocoder_export
    onnx_decoder = OnnxToken2Wav(load_config(micro_dir), micro_dir / layout.FLOW_DECODER_ONNX, vocoder_path, threads=2)
    torch_decoder = Token2Wav.from_checkpoint(micro_dir)
    voice, tokens = make_voice(3, 12, 24), make_tokens(3, 60)
    np.testing.assert_allclose(onnx_decoder(tokens, *voice, seed=5), torch_decoder(tokens, *voice, seed=5), atol=1e-4)

    def streamed(decoder):
        stream = decoder.stream(*voice, seed=5, chunk_tokens=10, lookahead_tokens=5)
        chunks = [stream.feed(tokens[i : i + 7]) for i in range(0, tokens.size, 7)]
        return [c for c in chunks if c.size] + [stream.finish()]

    onnx_chunks, torch_chunks = streamed(onnx_decoder), streamed(torch_decoder)
    assert len(onnx_chunks) == len(torch_chunks) > 2
    for a, b in zip(onnx_chunks, torch_chunks):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_export_clis_report_a_missing_folder(tmp_path, capsys):
    for main in (flow_main, vocoder_main):
        assert main(["--decoder-dir", str(tmp_path / "missing")]) == 2
        assert layout.DECODER_YAML in capsys.readouterr().err
    # --portable is the flow exporter's own flag: taken, then the same missing-folder error
    assert flow_main(["--decoder-dir", str(tmp_path / "missing"), "--portable"]) == 2
    assert layout.DECODER_YAML in capsys.readouterr().err
