"""The rendered configurations, GPU and CPU variant of every served model, compared in content (comments and layout
aside) with ``rendered_configs.txt``. A deliberate config change updates that file
(``STEPAUDIO_UPDATE_RENDERED_CONFIGS=1``), so the review sees exactly what the served interface gains or loses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.render_repository import (
    VARIANT_FILES,
    RenderError,
    base_values,
    main,
    render_model,
    resolve_flow_dtype,
    served_models,
)

EXPECTED = Path(__file__).with_name("rendered_configs.txt")
CHECKPOINTS = Path("/checkpoints")  # never read: only filled into the configs' paths


def parsed(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def rendered_configs(out: Path) -> dict[str, model_config_pb2.ModelConfig]:
    """Every config file of every served model, by "model/file", rendered without exports (the flow precision pinned:
    "auto" follows the CPU that renders)."""
    values = base_values(CHECKPOINTS, Path("/voices"), {"decoder_flow_dtype": "float32"})
    configs = {}
    for model in served_models(CHECKPOINTS):
        target = render_model(model, out, values)
        for name in VARIANT_FILES.values():
            if (target / name).exists():
                configs[f"{model.name}/{name}"] = parsed(target / name)
    return configs


def as_text(configs: dict[str, model_config_pb2.ModelConfig]) -> str:
    return "".join(f"### {key}\n{text_format.MessageToString(config)}\n" for key, config in sorted(configs.items()))


def test_rendered_configs_match_the_recorded_interface(tmp_path):
    actual = as_text(rendered_configs(tmp_path / "repo"))
    if os.environ.get("STEPAUDIO_UPDATE_RENDERED_CONFIGS"):
        EXPECTED.write_text(actual)
    assert actual == EXPECTED.read_text()


def _flow_configs(out: Path, overrides: dict[str, str]) -> dict[str, model_config_pb2.ModelConfig]:
    values = base_values(CHECKPOINTS, None, overrides)
    configs = {}
    for model in served_models(CHECKPOINTS):
        if model.template == "flow_decoder":
            target = render_model(model, out, values)
            configs |= {f"{model.name}/{name}": parsed(target / name) for name in VARIANT_FILES.values()}
    return configs


def test_the_bf16_flow_changes_only_the_cpu_flow_decoders_session(tmp_path):
    default = _flow_configs(tmp_path / "default", {"decoder_flow_dtype": "float32"})
    explicit = _flow_configs(tmp_path / "float32", {"decoder_flow_dtype": "float32"})
    half = _flow_configs(tmp_path / "bfloat16", {"decoder_flow_dtype": "bfloat16"})
    assert sorted(half) == sorted(default) == [f"{m}/{f}" for m in ("flow_decoder", "flow_decoder_music")
                                               for f in sorted(VARIANT_FILES.values())]
    for key, config in default.items():
        assert "session_factory" not in config.parameters and "flow_dtype" not in config.parameters, key
        assert explicit[key] == config, key
        if key.endswith(VARIANT_FILES["gpu"]):
            assert half[key] == config, f"{key}: the GPU config ignores decoder_flow_dtype"
            continue
        expected = model_config_pb2.ModelConfig()
        expected.CopyFrom(config)
        expected.parameters["session_factory"].string_value = "stepaudio.decoder.torch_session:flow_session"
        expected.parameters["flow_dtype"].string_value = "bfloat16"
        assert half[key] == expected, key


def test_an_unknown_flow_dtype_is_refused_at_render_time(tmp_path, capsys):
    with pytest.raises(RenderError, match="decoder_flow_dtype must be one of"):
        base_values(CHECKPOINTS, None, {"decoder_flow_dtype": "float16"})
    assert main(["--checkpoints", str(tmp_path), "--out", str(tmp_path / "repo"), "--set", "decoder_flow_dtype=bf16"]) == 2
    assert "decoder_flow_dtype must be one of ['auto', 'float32', 'bfloat16'], got 'bf16'" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2", "amx_tile", "amx_bf16"}, "bfloat16"),  # Intel Sapphire Rapids and later
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),  # AMD Zen 4 and later
    ({"avx2", "avx512f", "avx512_vnni"}, "float32"),  # AVX-512 without bf16 dot products
    (set(), "float32"),  # no /proc/cpuinfo
])
def test_auto_precision_follows_the_cpus_bf16_units(flags, expected):
    dtype, why = resolve_flow_dtype("auto", frozenset(flags))
    assert dtype == expected and why.startswith("auto: ")
    assert resolve_flow_dtype("float32", frozenset(flags)) == ("float32", "set by decoder_flow_dtype")


def test_the_default_precision_is_auto_and_reaches_the_config(tmp_path, monkeypatch):
    import export.render_repository as render_module

    assert render_module.DEFAULTS["decoder_flow_dtype"] == "auto"
    monkeypatch.setattr(render_module, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    with_units = _flow_configs(tmp_path / "amx", {})
    monkeypatch.setattr(render_module, "cpu_flags", lambda: frozenset({"avx2"}))
    without = _flow_configs(tmp_path / "avx2", {})
    cpu = f"flow_decoder/{VARIANT_FILES['cpu']}"
    assert with_units[cpu].parameters["flow_dtype"].string_value == "bfloat16"
    assert "flow_dtype" not in without[cpu].parameters


def test_decoder_cpu_threads_reach_both_cpu_decoders_and_are_checked(tmp_path):
    four = _flow_configs(tmp_path / "four", {"decoder_cpu_threads": "4"})
    for key, config in four.items():
        if key.endswith(VARIANT_FILES["cpu"]):
            assert config.parameters["intra_op_thread_count"].string_value == "4", key
    for bad in ("0", "two", "-1", ""):
        with pytest.raises(RenderError, match="decoder_cpu_threads must be a whole number"):
            base_values(CHECKPOINTS, None, {"decoder_cpu_threads": bad})
