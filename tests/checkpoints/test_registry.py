"""The checkpoint command's registry: writers register by name, the tree is written under one root."""

from __future__ import annotations

import pytest

from stepaudio.checkpoints import registry


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(registry, "_WRITERS", {})
    monkeypatch.setattr(registry, "WRITER_MODULES", ())
    return registry


def test_registered_writers_write_under_root(isolated_registry, tmp_path):
    @isolated_registry.register_writer("alpha")
    def write_alpha(root, variant, seed):
        path = root / "A" / f"{variant}-{seed}.txt"
        path.parent.mkdir(parents=True)
        path.write_text("a")
        return [path]

    written = isolated_registry.write_tree(tmp_path, "tiny", seed=7)
    assert written == [tmp_path / "A" / "tiny-7.txt"]
    assert written[0].read_text() == "a"


def test_unknown_variant_and_component_are_rejected(isolated_registry, tmp_path):
    isolated_registry.register_writer("alpha")(lambda root, variant, seed: [])
    with pytest.raises(ValueError, match="unknown checkpoint variant"):
        isolated_registry.write_tree(tmp_path, "huge")
    with pytest.raises(ValueError, match="unknown checkpoint component"):
        isolated_registry.write_tree(tmp_path, "tiny", only=["beta"])


def test_a_name_cannot_be_registered_twice(isolated_registry):
    isolated_registry.register_writer("alpha")(lambda root, variant, seed: [])
    with pytest.raises(ValueError, match="registered twice"):
        isolated_registry.register_writer("alpha")(lambda root, variant, seed: [1])


def test_whole_tree_skips_an_unavailable_variant_but_a_named_one_fails(isolated_registry, tmp_path):
    def refuse(root, variant, seed):
        raise isolated_registry.VariantUnavailable("too big")

    isolated_registry.register_writer("big")(refuse)
    isolated_registry.register_writer("small")(lambda root, variant, seed: [root / "s"])
    with pytest.warns(UserWarning, match="skipped checkpoint component 'big'"):
        assert isolated_registry.write_tree(tmp_path, "real") == [tmp_path / "s"]
    with pytest.raises(ValueError, match="too big"):
        isolated_registry.write_tree(tmp_path, "real", only=["big"])
