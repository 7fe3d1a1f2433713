"""Exporters: library modules → ONNX (every machine) → TensorRT plans (GPU machines with TensorRT)."""

from __future__ import annotations

import onnx


def strip_node_metadata(graph: onnx.GraphProto) -> None:
    """Drop the per-node metadata the dynamo exporter records (source stack traces, module paths).

    It is debugging information only and, for the unrolled flow graph, over 100 MB of the file.
    """
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
