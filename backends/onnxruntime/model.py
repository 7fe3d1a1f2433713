"""A python-based Triton backend named ``onnxruntime`` for the CPU server.

Triton's pytriton wheel build has only the python backend. Copied to ``<backend-dir>/onnxruntime/model.py`` by
the launcher, this file serves every model whose config says ``backend: "onnxruntime"`` (or
``platform: "onnxruntime_onnx"``), so an ONNX model folder keeps one layout for both deployments: the GPU
``config.pbtxt`` uses the native ORT/TensorRT backend of an NGC container, ``configs/cpu.pbtxt`` loads here.

Why a backend and not a python model per ONNX file: the model folder, file name (``1/model.onnx``) and config
keys stay those of the native backend, so nothing in the repository is CPU-specific except ``cpu.pbtxt``.

Behaviour matches the native backend where it matters: inputs/outputs by the names in the config, dynamic
batching (requests arrive together; those with equal non-batch shapes run as one ORT call), ``reshape`` (a
``[1]`` tensor the graph takes as a per-row scalar), the ``intra_op_thread_count`` / ``inter_op_thread_count``
parameters, errors returned per request.
"""

import json
import os
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config, key, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") or value.startswith("${") else value


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        filename = self.config.get("default_model_filename") or "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(self.config, "intra_op_thread_count", "1"))
        options.inter_op_num_threads = int(_parameter(self.config, "inter_op_thread_count", "1"))
        self.session = ort.InferenceSession(
            os.path.join(version_dir, filename), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in self.config["input"]]
        self.input_dtypes = {
            i["name"]: pb_utils.triton_string_to_numpy(i["data_type"]) for i in self.config["input"]
        }
        # "reshape" maps the config dims to what the graph takes (inputs) or gives (outputs), batch dim excluded.
        self.input_reshape = {i["name"]: i["reshape"].get("shape", []) for i in self.config["input"] if "reshape" in i}
        self.output_dims = {o["name"]: [int(d) for d in o["dims"]] for o in self.config["output"] if "reshape" in o}
        self.outputs = [o["name"] for o in self.config["output"]]
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config["output"]
        }
        session_inputs = {i.name for i in self.session.get_inputs()}
        missing = [name for name in self.inputs if name not in session_inputs]
        if missing:
            raise pb_utils.TritonModelException(f"config inputs {missing} are not inputs of {filename}")

    def execute(self, requests):
        responses = [None] * len(requests)
        feeds = []
        for request in requests:
            feed = {}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    value = tensor.as_numpy().astype(self.input_dtypes[name], copy=False)
                    if name in self.input_reshape:
                        lead = [value.shape[0]] if self.max_batch_size else []
                        value = value.reshape(lead + [int(d) for d in self.input_reshape[name]])
                    feed[name] = value
            feeds.append(feed)

        # Requests with identical shapes run as one batch (the dynamic batcher only groups such requests,
        # unless a config asks for ragged batching, which this backend does not support).
        groups = defaultdict(list)
        for index, feed in enumerate(feeds):
            key = tuple((name, feed[name].shape[1:] if self.max_batch_size else feed[name].shape) for name in sorted(feed))
            groups[key if self.max_batch_size else ("single", index)].append(index)

        for indices in groups.values():
            try:
                if len(indices) == 1:
                    batch = feeds[indices[0]]
                else:
                    batch = {name: np.concatenate([feeds[i][name] for i in indices]) for name in feeds[indices[0]]}
                results = self.session.run(self.outputs, batch)
            except Exception as exc:  # ORT raises its own exception types; report them per request
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"onnxruntime: {exc}", pb_utils.TritonError.INVALID_ARG)
                    )
                continue
            offset = 0
            for i in indices:
                rows = next(iter(feeds[i].values())).shape[0] if self.max_batch_size else None
                tensors = []
                for name, value in zip(self.outputs, results):
                    part = value[offset : offset + rows] if rows is not None else value
                    if name in self.output_dims:
                        part = part.reshape(list(part.shape[:1] if rows is not None else []) + self.output_dims[name])
                    tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(part.astype(self.output_dtypes[name]))))
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                offset += rows or 0
        return responses
