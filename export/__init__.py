"""Exporters: library modules → ONNX (every machine) → TensorRT plans (GPU machines with TensorRT)."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, Iterator

import onnx
from onnx import numpy_helper

# Programs traced inside ``sharing_traces()``: (kind, architecture config, programs, names of the weights each
# program took from its module), looked up by equality of kind and config.
_traces: list[tuple[str, object, tuple, tuple[frozenset[str], ...]]] | None = None


@contextlib.contextmanager
def sharing_traces() -> Iterator[None]:
    """Within this block, exporters trace each architecture once: a second checkpoint with an equal config (the music
    decoder next to the speech one) reuses the traced programs with its own weights (``traced``), which gives the
    same file as tracing it again (tests/export/test_shared_export.py) in a fraction of the time."""
    global _traces
    outer, _traces = _traces, []
    try:
        yield
    finally:
        _traces = outer


def traced(kind: str, config, modules: tuple, trace: Callable[[], tuple]) -> tuple:
    """``trace()``'s programs (``torch.onnx.ONNXProgram``s, one per module of ``modules``), or, inside
    ``sharing_traces()`` and for an architecture traced before, those programs with ``modules``' weights."""
    if _traces is None:
        return trace()
    for seen_kind, seen_config, programs, weights in _traces:
        if seen_kind == kind and seen_config == config:
            for program, module, names in zip(programs, modules, weights, strict=True):
                _apply_weights(program, module, names)
            return programs
    programs = trace()
    # The weights a graph holds are the module's parameters and buffers it uses, as initializers named by their path.
    weights = tuple(frozenset(m.state_dict()) & set(p.model.graph.initializers) for p, m in zip(programs, modules, strict=True))
    _traces.append((kind, config, programs, weights))
    return programs


def _apply_weights(program, module, names: frozenset[str]) -> None:
    """Put ``module``'s values of the weights ``names`` into the traced ``program``; each must exist in the module."""
    state = module.state_dict()
    missing = sorted(names - set(state))
    if missing:
        raise ValueError(f"the module has no weight {missing[:5]} ({len(missing)} in all) that the traced graph holds")
    program.apply_weights({name: state[name] for name in names})


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
