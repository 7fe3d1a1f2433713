"""What the live-server tests share besides fixtures: request tensors, batch statistics, the smoke ONNX graph."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stepaudio_server.launcher import TritonServer


def write_smoke_onnx(path: Path) -> None:
    """y = 3x·gain + 1 with a dynamic batch dimension; ``gain`` is a per-row scalar (shape [batch]) that the
    config declares as dims [1] with ``reshape: { shape: [ ] }``, and ``total`` ([batch]) comes back the same way."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["gain", "axis1"], ["gain_col"]),
            helper.make_node("Mul", ["x", "three"], ["t"]),
            helper.make_node("Mul", ["t", "gain_col"], ["u"]),
            helper.make_node("Add", ["u", "one"], ["y"]),
            helper.make_node("ReduceSum", ["y", "axis1"], ["total"], keepdims=0),
        ],
        "smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("gain", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("three", TensorProto.FLOAT, [], [3.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
         helper.make_tensor("axis1", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    # git does not keep the empty version folder, so a clean clone lacks it.
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def http_input(name: str, array: np.ndarray):
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def grpc_input(name: str, array: np.ndarray):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


class BatchCounts:
    """A model's (inference_count, execution_count) before and after some requests.

    Triton records a request's statistics after its response has gone out (the python backend reports them when
    ``execute`` returns), so a client can hold every response before the counts include them: ``settle`` polls
    until ``expected`` more inferences are recorded instead of reading once.
    """

    def __init__(self, server: TritonServer, model: str):
        self.server, self.model = server, model
        self.before = self._read()

    def _read(self) -> tuple[int, int]:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.server.http_url)
        try:
            stats = client.get_inference_statistics(self.model)["model_stats"][0]
        finally:
            client.close()
        return int(stats["inference_count"]), int(stats["execution_count"])

    def settle(self, expected: int, timeout_s: float = 10.0) -> tuple[int, int]:
        """(new inferences, new executions), once at least ``expected`` new inferences show or the time is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            inferences, executions = self._read()
            if inferences - self.before[0] >= expected or time.monotonic() > deadline:
                return inferences - self.before[0], executions - self.before[1]
            time.sleep(0.05)
