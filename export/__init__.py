"""Exporters: library modules → ONNX (every machine) → TensorRT plans (GPU machines with TensorRT)."""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import numpy_helper


def strip_node_metadata(graph: onnx.GraphProto) -> None:
    """Drop the per-node metadata the dynamo exporter records (source stack traces, module paths).

    It is debugging information only and, for the unrolled flow graph, over 100 MB of the file.
    """
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def fold_weight_transposes(graph: onnx.GraphProto) -> None:
    """Replace ``Transpose(initializer)`` nodes (the exporter's form of ``nn.Linear``) by transposed initializers.

    ONNX Runtime would fold them at load time anyway, but once per node: in the unrolled flow graph each Euler step's
    copy of a weight would get its own transposed copy (10× the U-Net's weights in memory). Folding them here, before
    the step is repeated, keeps one shared tensor per weight.
    """
    initializers = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(value.name for value in graph.output)
    kept, folded = [], []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            folded.append(numpy_helper.from_array(array.transpose(perm), node.output[0]))
            uses[node.input[0]] -= 1
        else:
            kept.append(node)
    unused = {name for name in initializers if uses[name] <= 0}
    remaining = [t for t in graph.initializer if t.name not in unused]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(remaining + folded)
