"""Each python model's adapter and its rendered configs (GPU and CPU variant) agree: every input the adapter reads is
declared, with a data type that reads the way the adapter reads it; every output it writes is declared.

The adapter code is read, not run (running needs the models): from ``1/model.py`` the calls are followed into the
``stepaudio_triton`` modules it imports, and each read (``optional_string(request, "TEXT")``,
``given_inputs(request, specs.names(specs.SAMPLING))``, ...) and write (``self.outputs("WAVEFORM", ...)``,
``string_tensor(...)``) is collected with the tensor names it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from export.render_repository import ROOT, TEMPLATES, VARIANT_FILES, base_values, render_model, served_models
from stepaudio_contract import specs
from tests.export.test_rendered_configs import parsed

LIBRARY = ROOT / "stepaudio_triton"
# Reader → the python type it reads an element as (None: the array as it is); a function that passes one of its own
# parameters to a reader as the tensor name becomes a reader too (see Calls).
READERS = {"optional_input": None, "required_input": None, "given_inputs": None, "optional_string": str,
           "optional_scalar": "cast", "prompt_ids": int}
DEFAULT_NAMES = {"prompt_ids": "INPUT_IDS"}
WRITERS = {"tensor", "string_tensor", "Tensor", "outputs"}  # pb_utils.Tensor, self.outputs (adapter.Outputs)
PYTHON_MODELS = sorted(p.parent.parent.name for p in TEMPLATES.glob("*/1/model.py"))


class Module:
    """One source file: its functions and methods by name, and its constants that evaluate from ``specs``."""

    def __init__(self, path: Path):
        self.tree = ast.parse(path.read_text())
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}
        self.classes = {n.name: {m.name: m for m in n.body if isinstance(m, ast.FunctionDef)}
                        for n in self.tree.body if isinstance(n, ast.ClassDef)}
        self.constants = {"specs": specs}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    self.constants[node.targets[0].id] = eval(ast.unparse(node.value), dict(self.constants))
                except Exception:  # noqa: BLE001 - not a constant of specs: not needed here
                    pass
        # Imported name → the stepaudio_triton module it is (``from stepaudio_triton import bls``) or comes from.
        self.imports = {alias.asname or alias.name: alias.name if node.module == "stepaudio_triton" else node.module.split(".")[-1]
                        for node in self.tree.body if isinstance(node, ast.ImportFrom) and node.module
                        and node.module.startswith("stepaudio_triton") for alias in node.names}


LIBRARY_MODULES = {p.stem: Module(p) for p in LIBRARY.glob("*.py") if p.stem != "adapter"}  # adapter: the readers


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _own_nodes(function: ast.FunctionDef) -> list[ast.AST]:
    """The nodes of ``function`` itself: not those of functions nested in it, nor the ``inputs=[...]`` of a request
    it builds for another model (tensors it sends, not outputs it writes)."""
    nodes, stack = [], list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        nodes.append(node)
        if not isinstance(node, ast.FunctionDef) and not (isinstance(node, ast.keyword) and node.arg == "inputs"):
            stack.extend(ast.iter_child_nodes(node))
    return nodes


def _loops(function: ast.FunctionDef) -> dict[str, ast.expr]:
    """Loop variables (for statements and comprehensions) → what they iterate over."""
    loops = {}
    for node in _own_nodes(function):
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
            loops[node.target.id] = node.iter
    return loops


def _values(expr: ast.expr, module: Module, loops: dict[str, ast.expr]) -> list | None:
    """What ``expr`` evaluates to from the module's constants, one value per loop iteration; None if it does not."""
    names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    bound = [name for name in names if name in loops]
    try:
        if not bound:
            return [eval(ast.unparse(expr), dict(module.constants))]
        (variable,) = bound
        iterable = eval(ast.unparse(loops[variable]), dict(module.constants))
        return [eval(ast.unparse(expr), dict(module.constants) | {variable: item}) for item in iterable]
    except Exception:  # noqa: BLE001 - a name the adapter computes: not a declared tensor name
        return None


class Calls:
    """Reads and writes reachable from a model's ``model.py``."""

    def __init__(self, model_py: Path):
        self.reads: list[tuple[str, type | None, str]] = []  # (tensor name, python type or None, where)
        self.writes: list[tuple[str, str]] = []
        self.parameters: list[tuple[str, str]] = []  # rendered_parameter keys: (key, where)
        self.readers = dict(READERS)
        self.seen: set[int] = set()
        own = Module(model_py)
        for function in own.functions.values():
            self._visit(function, own, None)
        for name, methods in own.classes.items():
            for method in methods.values():
                self._visit(method, own, name)

    def _visit(self, function: ast.FunctionDef, module: Module, owner: str | None) -> None:
        if id(function) in self.seen:
            return
        self.seen.add(id(function))
        parameters = [a.arg for a in function.args.args]
        loops = _loops(function)
        nodes = _own_nodes(function)
        for node in nodes:  # nested helpers first: one may wrap a reader (SequenceControls.from_request's flag)
            if isinstance(node, ast.FunctionDef):
                self._visit(node, module, owner)
        for node in nodes:
            if not isinstance(node, ast.Call):
                continue
            callee = _callee(node)
            if callee in self.readers:
                self._read(node, callee, module, loops, parameters, function.name)
            elif callee in WRITERS and node.args and isinstance(node.args[0], ast.Constant):
                self.writes.append((node.args[0].value, function.name))
            elif callee == "rendered_parameter":
                self.parameters.append((node.args[1].value, function.name))
            for target, target_module, target_owner in self._resolve(node, module, owner):
                self._visit(target, target_module, target_owner)

    def _read(self, call, reader, module, loops, parameters, where) -> None:
        position = 1 if reader in READERS else self.readers[reader][1]
        kind = READERS.get(reader, None)
        if len(call.args) <= position:
            if reader in DEFAULT_NAMES:
                self.reads.append((DEFAULT_NAMES[reader], kind, where))
            return
        argument = call.args[position]
        if isinstance(argument, ast.Name) and argument.id in parameters:
            self.readers.setdefault(where, (None, parameters.index(argument.id)))  # a wrapper: its callers name it
            return
        values = _values(argument, module, loops)
        assert values is not None, f"{where}: cannot tell which input {ast.unparse(argument)} names"
        casts = _values(call.args[2], module, loops) if kind == "cast" else [kind] * len(values)
        for value, cast in zip(values, casts or [None] * len(values)):
            for name in [value] if isinstance(value, str) else value:
                self.reads.append((name, cast, where))

    def _resolve(self, call: ast.Call, module: Module, owner: str | None):
        """The functions a call may run: in this module, an imported stepaudio_triton module, or a method."""
        func = call.func
        if isinstance(func, ast.Name):
            home = LIBRARY_MODULES.get(module.imports.get(func.id, ""), module)
            if func.id in home.functions:
                yield home.functions[func.id], home, None
            elif func.id in home.classes:
                yield from ((m, home, func.id) for n, m in home.classes[func.id].items() if n == "__init__")
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            base = func.value.id
            if base in ("self", "cls") and owner is not None:
                found = module.classes.get(owner, {}).get(func.attr)
                if found is not None:
                    yield found, module, owner
                    return
            home = LIBRARY_MODULES.get(module.imports.get(base, base if base in LIBRARY_MODULES else ""))
            if home is not None and func.attr in home.functions:  # bls.call, ...
                yield home.functions[func.attr], home, None
            elif home is not None and func.attr in home.classes.get(base, {}):  # ChatGraph.speaking_from_config
                yield home.classes[base][func.attr], home, base
            elif base in module.classes and func.attr in module.classes[base]:
                yield module.classes[base][func.attr], module, base
            else:  # session.attach(sender): a method of this module's one class that has it
                yield from _unique_method(func.attr, [module])
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) and ast.unparse(func.value.value) == "self":
            yield from _unique_method(func.attr, LIBRARY_MODULES.values())  # self.service.handle(request)


def _unique_method(name: str, modules):
    """The method ``name`` when exactly one class of ``modules`` defines it (the object's type is not known here)."""
    found = [(methods[name], module, cls) for module in modules for cls, methods in module.classes.items() if name in methods]
    return found if len(found) == 1 else []


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """model → variant → its rendered config."""
    out = tmp_path_factory.mktemp("repo")
    values = base_values(Path("/checkpoints"), None, {})
    rendered = {}
    for model in served_models(Path("/checkpoints")):
        if model.template in PYTHON_MODELS and model.name == model.template:
            target = render_model(model, out, values)
            rendered[model.name] = {v: parsed(target / f) for v, f in VARIANT_FILES.items() if (target / f).exists()}
    return rendered


def _declared_inputs(config) -> dict[str, str]:
    inputs = {i.name: i.data_type for i in config.input}
    controls = {c.name: None for c in config.sequence_batching.control_input}  # START / END of a sequence
    return inputs | controls


@pytest.mark.parametrize("model", PYTHON_MODELS)
def test_adapter_reads_declared_inputs_as_declared(model, configs):
    from tritonclient.grpc import model_config_pb2

    calls = Calls(TEMPLATES / model / "1" / "model.py")
    assert calls.reads, f"{model}: no input reads found (the scan lost the adapter)"
    for variant, config in configs[model].items():
        declared = _declared_inputs(config)
        for name, cast, where in calls.reads:
            assert name in declared, f"{model} ({variant}): {where} reads {name}, which the config does not declare"
            if cast is not None and declared[name] is not None:
                data_type = model_config_pb2.DataType.Name(declared[name])
                assert specs.python_type(data_type) is cast, f"{model}: {where} reads {name} as {cast}, declared {data_type}"


@pytest.mark.parametrize("model", PYTHON_MODELS)
def test_adapter_writes_declared_outputs(model, configs):
    calls = Calls(TEMPLATES / model / "1" / "model.py")
    assert calls.writes, f"{model}: no output writes found (the scan lost the adapter)"
    for variant, config in configs[model].items():
        declared = {o.name for o in config.output}
        for name, where in calls.writes:
            assert name in declared, f"{model} ({variant}): {where} writes {name}, which the config does not declare"


@pytest.mark.parametrize("model", PYTHON_MODELS)
def test_every_declared_tensor_is_used(model, configs):
    """A declared input the adapter never reads is ignored silently; an output it never writes is always empty.
    (ERROR is written by ``adapter.send_error`` for every decoupled model.)"""
    calls = Calls(TEMPLATES / model / "1" / "model.py")
    read, written = {name for name, _, _ in calls.reads}, {name for name, _ in calls.writes}
    for config in configs[model].values():
        assert {i.name for i in config.input} <= read, f"{model}: declared inputs never read"
        assert {o.name for o in config.output} - {specs.ERROR.name} <= written, f"{model}: declared outputs never written"


@pytest.mark.parametrize("model", PYTHON_MODELS)
def test_rendered_parameters_are_set_in_every_config(model, configs):
    """An adapter's ``rendered_parameter`` has no default: a config without it would fail to load."""
    calls = Calls(TEMPLATES / model / "1" / "model.py")
    for variant, config in configs[model].items():
        for key, where in calls.parameters:
            assert config.parameters[key].string_value, f"{model} ({variant}): {where} needs parameter {key}"


def test_the_scan_sees_reads_through_groups_wrappers_and_shared_modules():
    """The scan must find what these adapters read indirectly, or the tests above would pass on nothing."""
    tts = {name for name, _, _ in Calls(TEMPLATES / "tts" / "1" / "model.py").reads}
    assert set(specs.names(specs.FRONTEND_INPUTS + specs.SAMPLING)) <= tts  # through _unbatched(request, names)
    chat = Calls(TEMPLATES / "voice_chat" / "1" / "model.py").reads
    assert ("REPLY_AUDIO", bool, "turn_request") in chat and ("TOP_K", None, "chat_sampling") in chat
    llm = Calls(TEMPLATES / "tts_llm" / "1" / "model.py").reads
    assert ("TOP_K", int, "sampling_from_request") in llm and ("INPUT_IDS", int, "_submit") in llm
    realtime = {name for name, _, _ in Calls(TEMPLATES / "realtime_session" / "1" / "model.py").reads}
    assert {"SPECULATION", "AUDIO", "START"} <= realtime
    assert "AUDIO" not in {n for n, _ in Calls(TEMPLATES / "realtime_session" / "1" / "model.py").writes}
    assert ("max_text_chars", "initialize") in Calls(TEMPLATES / "tts_frontend" / "1" / "model.py").parameters
    assert ("default_speaker", "speaking_from_config") in Calls(TEMPLATES / "voice_chat" / "1" / "model.py").parameters
    assert not Calls(TEMPLATES / "chat_reply" / "1" / "model.py").parameters  # it never speaks


def test_sampling_inputs_are_named_after_sampling_params_fields():
    """``generation.sampling_from_request`` sets the field named like each input, lower-cased."""
    import dataclasses

    from stepaudio.llm.sampling import SamplingParams

    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    for tensor in specs.SAMPLING:
        assert tensor.name.lower() in fields
