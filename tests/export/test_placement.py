"""The GPU deployment plan (export/placement.py) on the published TTS-3B and Chat-130B shapes (Appendix D)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export import placement
from export import render_repository as rr
from export.placement import GIB, MARGIN, LLMShape, PlacementError, parse_inventory, plan
from stepaudio.checkpoints import layout

PUBLISHED = {
    layout.TTS_DIR: dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=48, num_attention_groups=4,
                         num_hidden_layers=32),
    layout.CHAT_DIR: dict(hidden_size=12288, intermediate_size=31232, num_attention_heads=96, num_attention_groups=8,
                          num_hidden_layers=88),
}
COMMON = dict(vocab_size=74752, max_seq_len=32768, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=3, pad_token_id=0,
              torch_dtype="bfloat16", model_type="step1", architectures=["Step1ForCausalLM"])
DECODERS = ["flow_decoder", "vocoder", "flow_decoder_music", "vocoder_music"]
TTS_MODELS = ["tts_llm", *DECODERS]
ALL_MODELS = ["chat_llm", *TTS_MODELS]


def write_published(root: Path, chat: bool = True) -> Path:
    """config.json files with the published values (no weights: the plan reads configs only; decoder dims absent →
    the published cosyvoice.yaml defaults)."""
    for folder, own in PUBLISHED.items():
        if folder == layout.CHAT_DIR and not chat:
            continue
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / layout.LLM_CONFIG).write_text(json.dumps(COMMON | own))
    return root


@pytest.fixture
def published(tmp_path):
    return write_published(tmp_path)


def _plan(root, inventory, models, overrides=None):
    values = rr.base_values(root, None, overrides or {})
    return plan(root, values, parse_inventory(inventory), models, set(overrides or {}))


def _fits(result):
    for gpu in result.gpus:
        assert result.used(gpu.index) <= gpu.memory_bytes * (1 - MARGIN), gpu


def test_the_published_shapes_give_the_published_sizes(published):
    tts = LLMShape.from_config("tts", published / layout.TTS_DIR / layout.LLM_CONFIG)
    chat = LLMShape.from_config("chat", published / layout.CHAT_DIR / layout.LLM_CONFIG)
    assert abs(tts.weight_bytes(2) - 7.06e9) < 0.01e9  # the one 7.06 GB safetensors shard
    assert 263e9 < chat.weight_bytes(2) < 266e9  # "about 130 B parameters, 265 GB in bf16"
    assert chat.kv_bytes_per_token(2) == 2 * 88 * 8 * 128 * 2


@pytest.mark.parametrize("inventory", ["1x80GB", "4x80GB", "1x24GB"])
def test_chat_does_not_fit_small_inventories_and_the_refusal_names_model_gpu_and_bytes(published, inventory):
    with pytest.raises(PlacementError) as refused:
        _plan(published, inventory, ALL_MODELS)
    message = str(refused.value)
    assert "does not fit on GPU 0" in message and "bytes" in message
    assert "chat_llm" in message


def test_8x80gb_places_chat_on_vllm_over_all_eight_and_tts_on_each(published):
    result = _plan(published, "8x80GB", ALL_MODELS)
    _fits(result)
    assert result.values["chat_llm_engine"] == "vllm" and result.values["chat_llm_instance_kind"] == "KIND_MODEL"
    assert result.values["chat_llm_tensor_parallel_size"] == "8"
    assert result.values["llm_max_model_len"] == "8192"  # 32768 x 8 streams does not fit beside TTS
    assert int(result.values["chat_max_context_tokens"]) + 4096 <= 8192
    for gpu in range(8):
        names = [p.model for p in result.on(gpu)]
        assert "chat_llm (vLLM)" in names and "tts_llm" in names and "heal reserve" in names
    share = float(result.values["chat_llm_gpu_memory_utilization"])
    others = result.used(0) - share * 80 * GIB
    assert share * 80 * GIB + others <= 0.95 * 80 * GIB  # the chat share and the rest add up


def test_8x141gb_keeps_two_decoder_instances_and_a_longer_context(published):
    result = _plan(published, "8x141GB", ALL_MODELS)
    _fits(result)
    assert result.values["chat_llm_tensor_parallel_size"] == "8"
    assert "decoder_gpu_instances" not in result.values  # the default 2 fits
    assert int(result.values.get("llm_max_model_len", "32768")) >= 16384


@pytest.mark.parametrize("inventory, gpus", [("1x80GB", 1), ("4x80GB", 4), ("8x80GB", 8), ("8x141GB", 8)])
def test_tts_only_fits_every_80gb_inventory_with_tts_on_every_gpu(tmp_path, inventory, gpus):
    result = _plan(write_published(tmp_path, chat=False), inventory, TTS_MODELS)
    _fits(result)
    assert [g for g in range(gpus) if "tts_llm" in [p.model for p in result.on(g)]] == list(range(gpus))
    assert "chat_llm_engine" not in result.values


def test_tts_only_on_24gb_is_refused(tmp_path):
    with pytest.raises(PlacementError, match=r"does not fit on GPU 0 \(24 GiB\).*bytes"):
        _plan(write_published(tmp_path, chat=False), "1x24GB", TTS_MODELS)


def test_chat_on_the_native_engine_is_refused_as_the_old_default_was(published):
    # KIND_GPU native: one 130B copy per GPU (issue #24, failure 1).
    with pytest.raises(PlacementError, match="chat_llm does not fit on GPU 0"):
        _plan(published, "8x80GB", ALL_MODELS, {"chat_llm_engine": "native"})


def test_an_operator_tensor_parallel_size_is_kept_or_refused(published):
    with pytest.raises(PlacementError, match="chat_llm does not fit"):
        _plan(published, "8x80GB", ALL_MODELS, {"chat_llm_tensor_parallel_size": "4"})
    with pytest.raises(PlacementError, match="divisor"):
        _plan(published, "8x80GB", ALL_MODELS, {"chat_llm_tensor_parallel_size": "5"})


def test_two_vllm_engines_on_one_gpu_get_shares_that_add_up(published):
    result = _plan(published, "8x141GB", ALL_MODELS, {"tts_llm_engine": "vllm"})
    _fits(result)
    chat, tts = (float(result.values[f"{m}_gpu_memory_utilization"]) for m in ("chat_llm", "tts_llm"))
    decoders = sum(p.total for p in result.on(0) if "vLLM" not in p.model) / (141 * GIB)
    assert chat + tts + decoders <= 1 - MARGIN + 1e-9


def test_inventory_forms_and_hostile_ones():
    assert [g.memory_bytes for g in parse_inventory("2x80GB,1x24GB")] == [80 * GIB, 80 * GIB, 24 * GIB]
    assert len(parse_inventory("8×141GB")) == 8
    for bad in ("", "x80GB", "8x", "1000x80GB", "8x0.5GB", "8x80TB"):
        with pytest.raises(PlacementError):
            parse_inventory(bad)
    assert placement.inventory("none") is None


def _without_builds(monkeypatch):
    original = rr.served_models
    monkeypatch.setattr(rr, "served_models", lambda c: [rr.ServedModel(m.name, m.template, m.values)
                                                         for m in original(c)])


def test_a_render_for_8x80gb_writes_the_plan_and_its_values_into_the_gpu_configs(tmp_path, monkeypatch):
    _without_builds(monkeypatch)  # the plan reads configs; exporting tiny decoders here would only cost time
    root = write_published(tmp_path / "ckpt")
    out = tmp_path / "repo"
    rr.render(root, out, gpus=parse_inventory("8x80GB"), only=["chat_llm", "tts_llm", *DECODERS])
    chat_gpu = (out / "chat_llm" / "config.pbtxt").read_text()
    assert "kind: KIND_MODEL" in chat_gpu and 'key: "engine" value: { string_value: "vllm" }' in chat_gpu
    assert 'key: "tensor_parallel_size" value: { string_value: "8" }' in chat_gpu
    assert 'key: "max_model_len" value: { string_value: "8192" }' in chat_gpu
    chat_cpu = (out / "chat_llm" / "configs" / "cpu.pbtxt").read_text()
    assert 'string_value: "native"' in chat_cpu  # the CPU server keeps its defaults
    assert "max_batch_size: 4" in (out / "vocoder" / "config.pbtxt").read_text()
    saved = json.loads((tmp_path / "repo.placement.json").read_text())
    assert saved["values"]["chat_llm_tensor_parallel_size"] == "8" and len(saved["gpus"]) == 8
    assert "chat_llm (vLLM)" in (tmp_path / "repo.placement.txt").read_text()


def test_a_render_without_the_chat_checkpoint_serves_tts_only(tmp_path, monkeypatch, tiny_checkpoints):
    _without_builds(monkeypatch)
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, root, symlinks=True)
    shutil.rmtree(root / layout.CHAT_DIR)
    lines = []
    rr.render(root, tmp_path / "repo", progress=lines.append)
    served = {p.name for p in (tmp_path / "repo").iterdir()}
    assert not served & set(placement.CHAT_MODELS)
    assert {"tts", "tts_llm", "tts_stream", "ensemble_tts", "tokenizer"} <= served
    assert any("serving TTS only" in line for line in lines)


def test_the_inventory_comes_from_nvidia_smi_where_it_is(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '81559\\n143771\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    gpus = placement.inventory("auto")
    assert [(g.index, g.memory_bytes) for g in gpus] == [(0, 81559 << 20), (1, 143771 << 20)]
    fake.write_text("#!/bin/sh\nexit 9\n")  # a failing nvidia-smi is a machine without GPUs, not a crash
    assert placement.inventory("auto") is None


def test_a_render_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    _without_builds(monkeypatch)
    root = write_published(tmp_path / "ckpt")
    with pytest.raises(rr.RenderError, match=r"chat_llm does not fit on GPU 0 \(80 GiB\).*bytes"):
        rr.render(root, tmp_path / "repo", gpus=parse_inventory("4x80GB"), only=["chat_llm", "tts_llm"])
    assert not (tmp_path / "repo").exists() and not (tmp_path / "repo.placement.txt").exists()
