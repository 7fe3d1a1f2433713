"""The Triton-version workarounds (``stepaudio_contract/compat.py``): the table, the features a version gets, and the
rendered configs of the default version against a fixed one (they differ exactly by what the table declares)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stepaudio_contract import compat, specs

FIXED = "2.58"  # the newest first-fixed release in the table


def test_every_workaround_names_its_upstream_fix_and_what_was_checked():
    names = [w.name for w in compat.WORKAROUNDS]
    assert len(names) == len(set(names))
    for w in compat.WORKAROUNDS:
        assert w.why and w.what_we_do and w.upstream_fix and w.checked, w.name
        if w.fixed_in is not None:
            assert compat.parse_version(w.fixed_in) > compat.parse_version(compat.DEFAULT_VERSION), w.name
            assert re.search(r"PR #\d+", w.upstream_fix), f"{w.name}: a fixed workaround names its PR"
    assert FIXED == max((w.fixed_in for w in compat.WORKAROUNDS if w.fixed_in), key=compat.parse_version)


def test_the_default_version_needs_every_workaround_and_a_fixed_one_only_the_unfixed():
    old = compat.TritonFeatures.for_version(compat.DEFAULT_VERSION)
    assert old.needed == {w.name for w in compat.WORKAROUNDS}
    new = compat.TritonFeatures.for_version(FIXED + ".0")
    assert new.needed == {w.name for w in compat.WORKAROUNDS if w.fixed_in is None}
    assert not (new.error_output or new.cancel_input or new.retired_iterators or new.requested_outputs_only
                or new.in_band_grpc_cancel)
    between = compat.TritonFeatures.for_version("2.53")  # PR #390 is in, PR #398 is not
    assert not between.retired_iterators and between.error_output and between.cancel_input
    assert between.in_band_grpc_cancel and not compat.TritonFeatures.for_version("2.57").in_band_grpc_cancel
    assert compat.TritonFeatures.for_version(None).version == compat.DEFAULT_VERSION
    with pytest.raises(KeyError):
        old.needs("no_such_workaround")


@pytest.mark.parametrize("bad", ["2", "latest", "2.51-rc", "", "2.51.0.1"])
def test_a_version_that_is_not_one_is_refused(bad):
    with pytest.raises(ValueError, match="looks like"):
        compat.parse_version(bad)
    assert compat.parse_version(" 2.51.0 ") == (2, 51)


def test_every_tensor_that_exists_for_a_workaround_names_one_in_the_table():
    tagged = [t for io in specs.MODELS.values() for t in (*io.inputs, *io.outputs) if t.only_for]
    assert {t.name for t in tagged} == {"CANCEL", "ERROR"}
    assert all(compat.workaround(t.only_for) for t in tagged)


def test_a_repository_rendered_for_a_fixed_server_is_refused_on_an_old_one():
    assert compat.mismatch(compat.DEFAULT_VERSION, FIXED) is None, "extra workarounds are harmless"
    assert compat.mismatch(FIXED, FIXED + ".0") is None
    message = compat.mismatch(FIXED, compat.DEFAULT_VERSION)
    assert "cancel_input" in message and "error_output" in message and f"triton_version={compat.DEFAULT_VERSION}" in message


def test_the_installed_version_comes_from_the_container_or_the_wheel(monkeypatch):
    monkeypatch.setenv("TRITON_SERVER_VERSION", "2.58.0")
    assert compat.installed_version() == "2.58"
    monkeypatch.delenv("TRITON_SERVER_VERSION")
    monkeypatch.setattr(compat.metadata, "version", lambda name: "0.7.0")
    assert compat.installed_version() == "2.51"
    monkeypatch.setattr(compat.metadata, "version", lambda name: "9.9.9")
    assert compat.installed_version() is None


# ---- rendered configs: the default version against a fixed one --------------------------------------------------

CHECKPOINTS = Path("/checkpoints")  # never read: only filled into the configs' paths


def _configs(out: Path, version: str) -> dict:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from export.render_repository import VARIANT_FILES, base_values, render_model, served_models

    values = base_values(CHECKPOINTS, Path("/voices"), {"triton_version": version, "decoder_flow_dtype": "float32"})
    configs = {}
    for model in served_models(CHECKPOINTS):
        target = render_model(model, out, values)
        for name in VARIANT_FILES.values():
            if (target / name).exists():
                configs[(model.name, model.template, name)] = text_format.Parse((target / name).read_text(),
                                                                               model_config_pb2.ModelConfig())
    return configs


def test_a_fixed_server_gets_the_same_configs_less_the_workaround_tensors(tmp_path):
    old, new = _configs(tmp_path / "old", compat.DEFAULT_VERSION), _configs(tmp_path / "new", FIXED)
    assert old.keys() == new.keys()
    fixed = compat.TritonFeatures.for_version(FIXED)
    dropped_somewhere = set()
    for key, config in old.items():
        _, template, _ = key
        io = specs.MODELS[template]
        extra = {t.name for t in (*io.inputs, *io.outputs) if t.only_for and not fixed.needs(t.only_for)}
        dropped_somewhere |= extra
        versions = {c.parameters[compat.VERSION_PARAMETER].string_value for c in (config, new[key])
                    if compat.VERSION_PARAMETER in c.parameters}
        if config.backend == "python":
            assert versions == {compat.DEFAULT_VERSION, FIXED}, key
        # Strip from the default config exactly what the table says a fixed server goes without: the rest is equal.
        expected = type(config)()
        expected.CopyFrom(config)
        for field in ("input", "output"):
            kept = [t for t in getattr(expected, field) if t.name not in extra]
            del getattr(expected, field)[:]
            getattr(expected, field).extend(kept)
        if compat.VERSION_PARAMETER in expected.parameters:
            expected.parameters[compat.VERSION_PARAMETER].string_value = FIXED
        assert expected == new[key], key
        if extra:
            assert {t.name for t in (*config.input, *config.output)} >= extra, f"{key}: 2.51 declares {extra}"
    assert dropped_somewhere == {"CANCEL", "ERROR"}


def test_a_bad_triton_version_fails_the_render():
    from export.render_repository import RenderError, base_values

    with pytest.raises(RenderError, match="triton_version"):
        base_values(CHECKPOINTS, None, {"triton_version": "newest"})
