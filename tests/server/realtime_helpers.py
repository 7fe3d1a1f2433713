"""Talking to the real-time sequence models (``vad``, ``stream_tokenizer``) as a client does: gRPC with a sequence
id and START/END flags; the live-session gauge read from the metrics endpoint."""

from __future__ import annotations

import re
import urllib.request

import numpy as np

from tests.server.helpers import grpc_input


def sequence_infer(client, model: str, sequence_id: int, audio: np.ndarray, outputs: list[str], rate: int | None = None,
                   start: bool = False, end: bool = False) -> dict[str, np.ndarray]:
    inputs = [grpc_input("AUDIO", np.asarray(audio)[None])]
    if rate is not None:
        inputs.append(grpc_input("SAMPLE_RATE", np.array([[rate]], dtype=np.int32)))
    result = client.infer(model, inputs, sequence_id=sequence_id, sequence_start=start, sequence_end=end)
    return {name: result.as_numpy(name)[0] for name in outputs}


def stream_through(client, model: str, sequence_id: int, wave: np.ndarray, rate: int, outputs: list[str],
                   seconds: float = 0.1) -> list[dict[str, np.ndarray]]:
    """The whole wave in ``seconds`` chunks: START on the first, END on the last."""
    step = int(rate * seconds)
    pieces = [wave[i:i + step] for i in range(0, wave.shape[0], step)]
    return [sequence_infer(client, model, sequence_id, piece.astype(np.float32), outputs, rate if i == 0 else None,
                           start=i == 0, end=i == len(pieces) - 1) for i, piece in enumerate(pieces)]


def live_sequences(server, model: str) -> int:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    match = re.search(r'^stepaudio_live_sequences\{model="%s"\} (\S+)$' % re.escape(model), text, re.M)
    assert match, f"no live-sequence gauge for {model} on the metrics endpoint"
    return int(float(match[1]))


def rendered_parameter(repository, model: str, key: str) -> str:
    text = (repository / model / "config.pbtxt").read_text()
    match = re.search(r'key: "%s" value: \{ string_value: "([^"]*)" \}' % re.escape(key), text)
    assert match, f"{model} has no parameter {key}"
    return match[1]
