"""Small tritonclient helpers shared by the CLIs: typed inputs for HTTP or gRPC, one-shot inference, and
streaming (gRPC bidirectional stream, or HTTP ``generate_stream`` server-sent events)."""

from __future__ import annotations

import json
import queue
import urllib.request
from typing import Iterator

import numpy as np

from stepaudio_contract import client as contract


def client(url: str, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(url)
    if protocol == "http":
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(url, network_timeout=600, connection_timeout=600)
    raise ValueError(f"protocol must be http or grpc, got {protocol!r}")


def inputs(protocol: str, tensors: dict[str, np.ndarray]) -> list:
    return contract.infer_inputs(tensors, protocol)


def infer(conn, protocol: str, model: str, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    result = conn.infer(model, inputs(protocol, tensors),
                        outputs=contract.requested_outputs(outputs, protocol))
    return {name: result.as_numpy(name) for name in outputs}


def grpc_stream(conn, model: str, tensors: dict[str, np.ndarray], outputs: list[str], timeout: float = 600) -> Iterator[dict]:
    """Responses of a decoupled model as dicts of the outputs each one carries; ends at the final response."""
    responses: queue.Queue = queue.Queue()
    conn.start_stream(callback=lambda result, error: responses.put((result, error)))
    finished = False
    try:
        conn.async_stream_infer(model, inputs("grpc", tensors), enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise RuntimeError(str(error))
            response = result.get_response()
            present = {o.name for o in response.outputs}
            values = {name: result.as_numpy(name) for name in outputs if name in present}
            finished = response.parameters["triton_final_response"].bool_param
            if values:
                yield values
            if finished:
                return
    finally:
        # After the final response the call is closed, never cancelled: a cancel that meets Triton 2.51 still
        # completing the call can crash the server (stepaudio_contract/compat.py: in_band_grpc_cancel). A stream
        # left early is cancelled, so that its work stops.
        conn.stop_stream(cancel_requests=not finished)


def json_payload(tensors: dict[str, np.ndarray]) -> dict:
    """generate_stream JSON: one-element tensors as scalars/strings, longer ones as lists."""
    payload = {}
    for name, value in tensors.items():
        if value.dtype == object:
            payload[name] = value.reshape(-1)[0].decode()
        else:
            payload[name] = value.reshape(-1)[0].item() if value.size == 1 else value.tolist()
    return payload


def http_generate_stream(url: str, model: str, payload: dict, timeout: float = 600) -> Iterator[dict]:
    """HTTP ``POST /v2/models/<model>/generate_stream``: JSON in, one JSON object per server-sent event."""
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/generate_stream",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                yield event
