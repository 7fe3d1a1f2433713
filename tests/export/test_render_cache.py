"""The render cache: an unchanged render touches nothing and exports nothing; a changed value re-fills the configs
but keeps the exports; changed checkpoint content re-exports. The export here is a stand-in that copies its
checkpoint file (the real ones take a minute), run by the same worker machinery as the real exporters."""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path

import pytest

from export import render_repository
from export.render_repository import render, served_models

CALLS = "STEPAUDIO_TEST_EXPORT_CALLS"  # a file the stand-in exporter appends to (outside its digest: not an argument)


def copy_export(source: Path, version_dir: Path) -> None:
    with open(os.environ[CALLS], "a") as calls:
        calls.write(f"{version_dir.parent.name}\n")
    (version_dir / "model.onnx").write_bytes((source / "flow.pt").read_bytes())


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def rendering(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    decoder = checkpoints / "decoder"
    decoder.mkdir(parents=True)
    (decoder / "flow.pt").write_bytes(b"weights v1")
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv(CALLS, str(calls))

    def models(root):
        chosen = {m.name: m for m in served_models(root) if m.name in ("chat_llm", "flow_decoder")}
        return [chosen["chat_llm"], dataclasses.replace(chosen["flow_decoder"], build=partial(copy_export, decoder))]

    monkeypatch.setattr(render_repository, "served_models", models)
    out = tmp_path / "repo"
    return (lambda on_exported=None, **values: render(checkpoints, out, None, values, on_exported=on_exported),
            out, calls, decoder)


def test_unchanged_inputs_reuse_the_tree_and_export_nothing(rendering):
    run, out, calls, _ = rendering
    first = run()
    tree = _tree(out)
    assert calls.read_text().split() == ["flow_decoder"]
    assert (out / "flow_decoder" / "1" / "model.onnx").read_bytes() == b"weights v1"
    assert run() == first
    assert calls.read_text().split() == ["flow_decoder"]  # no export work
    assert _tree(out) == tree  # the same files, not even rewritten


def test_the_export_step_reports_each_finished_export(rendering):
    run, _, _, decoder = rendering
    counts = []
    run(on_exported=lambda done, total: counts.append((done, total)))
    assert counts == [(0, 1), (1, 1)]
    run(on_exported=lambda done, total: counts.append((done, total)))
    assert counts == [(0, 1), (1, 1)]  # reused: nothing exported, nothing reported


def test_a_changed_value_refills_configs_and_keeps_exports(rendering):
    run, out, calls, decoder = rendering
    run()
    config = out / "flow_decoder" / "configs" / "cpu.pbtxt"
    before = config.read_text()
    run(decoder_max_batch_size="3")
    assert config.read_text() != before and "max_batch_size: 3" in config.read_text()
    assert calls.read_text().split() == ["flow_decoder"]
    assert (out / "flow_decoder" / "1" / "model.onnx").read_bytes() == b"weights v1"
    (decoder / "flow.pt").write_bytes(b"weights v2")  # new checkpoint content: exported again
    run(decoder_max_batch_size="3")
    assert calls.read_text().split() == ["flow_decoder", "flow_decoder"]
    assert (out / "flow_decoder" / "1" / "model.onnx").read_bytes() == b"weights v2"


def test_export_code_covers_every_library_module_the_exporters_import():
    """A change in any library module an exporter loads must change the export digest (``EXPORT_CODE``)."""
    import subprocess
    import sys

    script = ("import sys, export.flow_onnx, export.vocoder_onnx, export.tokenizer_onnx; "
              "print('\\n'.join(m.__file__ for n, m in list(sys.modules.items()) "
              "if n.split('.')[0] in ('stepaudio', 'export') and getattr(m, '__file__', None)))")
    files = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           cwd=render_repository.ROOT).stdout.split()
    assert files
    covered = [Path(p).resolve() for p in render_repository.EXPORT_CODE]
    outside = [f for f in files if not any(Path(f).resolve() == c or c in Path(f).resolve().parents for c in covered)]
    assert outside == []
