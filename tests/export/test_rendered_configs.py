"""The rendered configurations, GPU and CPU variant of every served model, compared in content (comments and layout
aside) with ``rendered_configs.txt``. A deliberate config change updates that file
(``STEPAUDIO_UPDATE_RENDERED_CONFIGS=1``), so the review sees exactly what the served interface gains or loses."""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.render_repository import VARIANT_FILES, base_values, render_model, served_models

EXPECTED = Path(__file__).with_name("rendered_configs.txt")
CHECKPOINTS = Path("/checkpoints")  # never read: only filled into the configs' paths


def parsed(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def rendered_configs(out: Path) -> dict[str, model_config_pb2.ModelConfig]:
    """Every config file of every served model, by "model/file", rendered without exports."""
    values = base_values(CHECKPOINTS, Path("/voices"), {})
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
