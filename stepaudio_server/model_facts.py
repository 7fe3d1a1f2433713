"""What the guard knows of each served model, read once from Triton's loaded configs at start (the rendered
repository is the truth; ``stepaudio_contract.specs`` declared the same tensors when it was rendered).

The guard uses these facts to refuse, before Triton parses a byte, requests that Triton would answer with a 5xx
although the client is at fault (docs/hardening.md#the-guard): ``infer`` on a decoupled model (Triton: 501) and a
``generate`` body whose values do not fit the model's inputs (Triton: 500 from its JSON accessors). The stub
supervisor uses two more: whether a heal must unload the model before loading it again (``unload_before_reload``)
and which models an ensemble is built of (to find the ensembles a heal takes down).
"""

from __future__ import annotations

from dataclasses import dataclass

from stepaudio_contract.specs import python_type


@dataclass(frozen=True)
class InputFact:
    name: str
    data_type: str  # Triton's name, e.g. TYPE_FP32
    rank: int  # dims in the config, plus one for the batch dimension of a batching model
    optional: bool


def unload_before_reload(config: dict) -> bool:
    """Whether healing this model must unload it before loading it again, from its loaded config.

    Triton's reload of a loaded model (a load with a changed config) starts the new instances before it stops the
    old ones: no outage, but twice the model's memory while both exist. On a GPU that second copy does not fit
    (a vLLM engine takes a fixed share of each GPU it spans and refuses to start when less is free; a native
    engine's weights and KV cache are sized to the GPU), so a model placed on a GPU heals unload first, with an
    outage; a CPU model keeps the load-first heal. On a GPU means: an instance group of kind ``KIND_GPU`` (Triton
    reports the kind it resolved, KIND_GPU where the config left it out on a GPU server), or the vLLM engine
    (``parameters.engine`` ``vllm``: a ``KIND_MODEL`` instance whose engine places itself on the GPUs), or a
    TensorRT plan (GPU only). The placement plan (export/placement.py) renders exactly these."""
    groups = config.get("instance_group") or []
    if any(isinstance(group, dict) and group.get("kind") == "KIND_GPU" for group in groups):
        return True
    engine = config.get("parameters", {}).get("engine", {})
    if isinstance(engine, dict) and engine.get("string_value") == "vllm":
        return True
    return config.get("platform") == "tensorrt_plan" or config.get("backend") == "tensorrt"


@dataclass(frozen=True)
class ModelFacts:
    internal: bool
    decoupled: bool
    inputs: tuple[InputFact, ...]
    unload_first: bool = False  # a heal unloads before it loads (unload_before_reload)
    composing: tuple[str, ...] = ()  # an ensemble's step models

    @classmethod
    def from_config(cls, config: dict) -> ModelFacts:
        """From Triton's ``GET /v2/models/<m>/config`` JSON."""
        batch = 1 if int(config.get("max_batch_size", 0) or 0) > 0 else 0
        inputs = tuple(
            InputFact(str(tensor["name"]), str(tensor.get("data_type", "TYPE_STRING")),
                      len(tensor.get("dims", [])) + batch, bool(tensor.get("optional", False)))
            for tensor in config.get("input", []) if isinstance(tensor, dict) and "name" in tensor)
        access = config.get("parameters", {}).get("access", {}).get("string_value")
        decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        steps = config.get("ensemble_scheduling", {}).get("step", [])
        composing = tuple(dict.fromkeys(str(step["model_name"]) for step in steps
                                        if isinstance(step, dict) and "model_name" in step))
        return cls(internal=access == "internal", decoupled=decoupled, inputs=inputs,
                   unload_first=unload_before_reload(config), composing=composing)


def _element_fits(value: object, data_type: str) -> bool:
    try:
        kind = python_type(data_type)
    except StopIteration:  # a type without a JSON spelling (TYPE_BF16): Triton says what it accepts
        return True
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _value_refusal(name: str, value: object, fact: InputFact) -> str | None:
    """A generate value is one element or nested lists of elements, no deeper than the input's rank."""
    level, items = 0, [value]
    while items and all(isinstance(item, list) for item in items):
        level += 1
        if level > max(fact.rank, 1):
            return f"'{name}' nests deeper than its {fact.rank} dimension(s)"
        items = [element for item in items for element in item]
    if not all(_element_fits(item, fact.data_type) for item in items):
        return f"'{name}' must hold {fact.data_type.removeprefix('TYPE_')} values (or a list of them)"
    return None


def _is_parameter_value(value: object) -> bool:
    return isinstance(value, (str, int, float, bool))


def generate_refusal(document: dict, inputs: tuple[InputFact, ...]) -> str | None:
    """Why a generate / generate_stream body does not fit the model's inputs, naming the field, or None.

    Triton's generate extension maps each top-level member to the input of that name; any other member is a
    request parameter (string, number or boolean), and ``parameters`` an object of them."""
    by_name = {fact.name: fact for fact in inputs}
    for key, value in document.items():
        fact = by_name.get(key)
        if fact is not None:
            if (why := _value_refusal(key, value, fact)) is not None:
                return why
        elif key == "parameters":
            if not isinstance(value, dict) or not all(_is_parameter_value(v) for v in value.values()):
                return "'parameters' must be an object of strings, numbers or booleans"
        elif not _is_parameter_value(value):
            return (f"'{key}' is not an input of this model (inputs: {', '.join(by_name) or 'none'}); "
                    "a request parameter must be a string, number or boolean")
    missing = [fact.name for fact in inputs if not fact.optional and fact.name not in document]
    if missing:
        return f"missing required input(s): {', '.join(missing)}"
    return None
