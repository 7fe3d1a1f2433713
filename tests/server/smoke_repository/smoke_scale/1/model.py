"""OUTPUT0 = scale * INPUT0, one numpy call for the whole dynamic batch."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.scale = np.float32(config["parameters"]["scale"]["string_value"])

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        sizes = [x.shape[0] for x in inputs]
        out = np.concatenate(inputs) * self.scale
        parts = np.split(out, np.cumsum(sizes)[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", p.astype(np.float32))]) for p in parts]
