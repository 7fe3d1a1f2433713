"""Exporting a second decoder with the same architecture reuses the first one's traces with its own weights
(``export.sharing_traces``, what rendering does for the music decoder): the file equals a fresh export's."""

from __future__ import annotations

from export import sharing_traces
from export.flow_onnx import build_flow_onnx
from export.vocoder_onnx import build_vocoder_onnx
from stepaudio.checkpoints import layout
from stepaudio.decoder.checkpoint import load_flow, load_hift
from stepaudio.testing.decoder import write_decoder_dir
from tests.export.helpers import MICRO


def test_second_decoder_of_an_architecture_equals_its_own_export(micro_dir, flow_session, vocoder_session, vocoder_export,
                                                                 tmp_path):
    """The session's fresh exports of ``micro_dir`` (fixtures) against traces of another decoder (same config, other
    weights) given ``micro_dir``'s weights: one extra trace per graph."""
    other = tmp_path / "other_decoder"
    write_decoder_dir(other, MICRO, seed=6)
    fresh = {build_flow_onnx: micro_dir / layout.FLOW_DECODER_ONNX, build_vocoder_onnx: vocoder_export[1]}
    for build, load in ((build_flow_onnx, load_flow), (build_vocoder_onnx, load_hift)):
        with sharing_traces():
            traced_other = build(load(other)).SerializeToString()
            shared = build(load(micro_dir)).SerializeToString()  # the other decoder's trace, micro_dir's weights
        assert shared == fresh[build].read_bytes() != traced_other, build.__name__
