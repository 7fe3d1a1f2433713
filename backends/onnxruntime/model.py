"""A python-based Triton backend named ``onnxruntime`` for the CPU server.

Triton's pytriton wheel build has only the python backend. Copied to ``<backend-dir>/onnxruntime/model.py`` by
the launcher, this file serves every model whose config says ``backend: "onnxruntime"`` (or
``platform: "onnxruntime_onnx"``), so an ONNX model folder keeps one layout for both deployments: the GPU
``config.pbtxt`` uses the native ORT/TensorRT backend of an NGC container, ``configs/cpu.pbtxt`` loads here.

Why a backend and not a python model per ONNX file: the model folder, file name (``1/model.onnx``) and config
keys stay those of the native backend, so nothing in the repository is CPU-specific except ``cpu.pbtxt``.

Behaviour matches the native backend where it matters: inputs/outputs by the names in the config, dynamic
batching (requests arrive together; those with equal non-batch shapes run as one ORT call), ``reshape`` (a
``[1]`` tensor the graph takes as a per-row scalar), the ``intra_op_thread_count`` / ``inter_op_thread_count`` /
``enable_mem_arena`` / ``memory.enable_memory_arena_shrinkage`` parameters, errors returned per request.

Beyond it, one request never fails another:
- ``feed_validator`` (``"module:factory"``): ``factory(parameters)`` (the model's string parameters) returns a check
  of one request's feeds that raises ``ValueError``; each request is checked alone before batching and a bad one is
  answered INVALID_ARG alone. Without it, ORT's own input errors are the only check.
- A batched ORT call that fails is re-run request by request, so only the culprit fails (INTERNAL when it passed
  the validator: then the fault is ours; logged with the traceback).
- Every float output is checked finite per request; a NaN/infinity fails that request only (INTERNAL, logged).

Another runtime behind the same contract: ``session_factory`` (``"module:factory"``, ``factory(parameters)``) returns
an object with ``run(output_names, feeds, run_options)`` → a list of numpy arrays and ``get_inputs()`` → objects with
``.name``, used instead of an ORT session; the ONNX file is then not loaded at all. Validation, batching, isolation,
the finiteness check and error codes are the same; an error it raises is handled as ORT's (a failed batch re-runs
request by request; INTERNAL for a validated request). The CPU flow_decoder's opt-in bf16 flow uses it
(``stepaudio.decoder.torch_session:flow_session``, the library's PyTorch flow: ORT's CPU EP has no bf16 MatMul).

Ragged batching: with ``ragged_batching`` (``"module:factory"``, same call as ``feed_validator``) and
``allow_ragged_batch`` inputs, requests of different lengths run together: the factory's object groups them into
length buckets (``buckets``), zero-pads each bucket into one batch (``pad``) and cuts each request's outputs back to
what it gets alone (``cut``); the graph's masks keep padding exact. Without it only equal shapes batch.
"""

import importlib
import json
import os
import traceback
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameters(config):
    """The config's string parameters, less those a renderer left unfilled (``${...}``) or empty."""
    values = {key: value.get("string_value") for key, value in config.get("parameters", {}).items()}
    return {key: value for key, value in values.items() if value and not value.startswith("${")}


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.name = self.config.get("name", args.get("model_name", "onnxruntime"))
        self.parameters = _parameters(self.config)
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        filename = self.config.get("default_model_filename") or "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.parameters.get("intra_op_thread_count", "1"))
        options.inter_op_num_threads = int(self.parameters.get("inter_op_thread_count", "1"))
        options.enable_cpu_mem_arena = self.parameters.get("enable_mem_arena", "1") not in ("0", "false")
        # Shrinking the arena after each run returns a large request's working memory to the system.
        self.run_options = ort.RunOptions()
        shrinkage = self.parameters.get("memory.enable_memory_arena_shrinkage")
        if shrinkage:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", shrinkage)
        # A session factory replaces ORT (and the ONNX file is never read); errors are reported under its name.
        self.session = self._load_factory("session_factory")
        self.runtime = self.parameters["session_factory"] if self.session is not None else "onnxruntime"
        if self.session is None:
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
            source = filename if self.runtime == "onnxruntime" else self.runtime
            raise pb_utils.TritonModelException(f"config inputs {missing} are not inputs of {source}")
        self.validate = self._load_factory("feed_validator")
        self.ragged = self._load_factory("ragged_batching") if self.max_batch_size else None

    def _load_factory(self, key):
        spec = self.parameters.get(key)
        if not spec:
            return None
        module_name, _, factory = spec.partition(":")
        try:
            return getattr(importlib.import_module(module_name), factory)(self.parameters)
        except Exception as exc:  # a model configured to validate or pad must not load without it
            raise pb_utils.TritonModelException(f"{self.name}: {key} {spec!r}: {exc}") from exc

    def _feed(self, request):
        feed = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                value = tensor.as_numpy().astype(self.input_dtypes[name], copy=False)
                if name in self.input_reshape:
                    lead = [value.shape[0]] if self.max_batch_size else []
                    value = value.reshape(lead + [int(d) for d in self.input_reshape[name]])
                feed[name] = value
        if self.validate is not None:
            self.validate(feed)
        return feed

    def _fault(self, what, indices):
        where = f"requests {indices} of this execution"
        pb_utils.Logger.log_error(f"{self.name}: {what} ({where})\n{traceback.format_exc()}")

    def execute(self, requests):
        responses = [None] * len(requests)
        feeds = {}
        for index, request in enumerate(requests):
            try:
                feeds[index] = self._feed(request)
            except ValueError as exc:
                responses[index] = _error(f"{self.name}: {exc}", pb_utils.TritonError.INVALID_ARG)
            except Exception as exc:  # a fault in reading or validating: this request only
                self._fault("reading the request failed", [index])
                responses[index] = _error(f"{self.name}: {exc}", pb_utils.TritonError.INTERNAL)

        if self.ragged is not None and feeds:
            groups = self.ragged.buckets(feeds)
        else:
            # Requests with identical shapes run as one batch (the dynamic batcher only groups such requests
            # unless the config allows ragged batches).
            by_shape = defaultdict(list)
            for index, feed in feeds.items():
                key = tuple((name, feed[name].shape[1:]) for name in sorted(feed))
                by_shape[key if self.max_batch_size else ("single", index)].append(index)
            groups = list(by_shape.values())
        for indices in groups:
            self._run_group(indices, feeds, responses)
        return responses

    def _batch(self, indices, feeds):
        if len(indices) == 1:
            return feeds[indices[0]]
        if self.ragged is not None:
            return self.ragged.pad([feeds[i] for i in indices])
        return {name: np.concatenate([feeds[i][name] for i in indices]) for name in feeds[indices[0]]}

    def _split(self, indices, feeds, results):
        """One ORT result list → each request's outputs by name (its rows; cut to its own shapes when ragged)."""
        outputs = dict(zip(self.outputs, results))
        if not self.max_batch_size:
            return [outputs]
        if self.ragged is not None and len(indices) > 1:
            return self.ragged.cut(outputs, [feeds[i] for i in indices])
        parts, offset = [], 0
        for i in indices:
            rows = next(iter(feeds[i].values())).shape[0]
            parts.append({name: value[offset : offset + rows] for name, value in outputs.items()})
            offset += rows
        return parts

    def _run_group(self, indices, feeds, responses):
        try:
            results = self.session.run(self.outputs, self._batch(indices, feeds), self.run_options)
        except Exception as exc:  # ORT raises its own exception types (a session factory's object, any)
            if len(indices) > 1:
                # Find the culprit: each request again on its own; the others still get their answers.
                for i in indices:
                    self._run_group([i], feeds, responses)
                return
            self._fault(f"{self.runtime} failed", indices)
            # A request the validator passed must run: its failure is ours. Unvalidated, ORT judges the input.
            invalid = self.validate is None and isinstance(exc, ort.capi.onnxruntime_pybind11_state.InvalidArgument)
            code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
            responses[indices[0]] = _error(f"{self.name}: {self.runtime}: {exc}", code)
            return
        for i, outputs in zip(indices, self._split(indices, feeds, results)):
            parts = {}
            for name, part in outputs.items():
                if name in self.output_dims:
                    lead = list(part.shape[:1]) if self.max_batch_size else []
                    part = part.reshape(lead + self.output_dims[name])
                parts[name] = np.ascontiguousarray(part.astype(self.output_dtypes[name]))
            bad = [name for name, part in parts.items() if part.dtype.kind == "f" and not np.all(np.isfinite(part))]
            if bad:
                message = f"{self.name}: the model produced NaN or infinity in {bad}"
                pb_utils.Logger.log_error(f"{message} (request {i} of this execution)")
                responses[i] = _error(message, pb_utils.TritonError.INTERNAL)
            else:
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(n, p) for n, p in parts.items()])
