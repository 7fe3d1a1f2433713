from __future__ import annotations

import json
import shutil

import jinja2
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stepaudio.checkpoints import layout
from stepaudio.llm.model import Step1ForCausalLM
from stepaudio.llm.weights import load_step1
from stepaudio.testing.llm import step1_config, write_llm

# Keys of the published config.json (docs/checkpoints.md#step1-llm-folders).
REAL_CONFIG_KEYS = {
    "architectures", "auto_map", "model_type", "hidden_size", "intermediate_size", "num_attention_heads",
    "num_attention_groups", "num_hidden_layers", "max_seq_len", "vocab_size", "rms_norm_eps", "bos_token_id",
    "eos_token_id", "pad_token_id", "torch_dtype",
}  # fmt: skip


def _copy_with_weights(source, target, shards: dict[str, dict[str, torch.Tensor]], index: bool = True):
    """A checkpoint folder like ``source`` whose weights are ``shards`` (file name → tensors)."""
    target.mkdir()
    for name in (layout.LLM_CONFIG, layout.LLM_SPM, layout.LLM_TOKENIZER_CONFIG):
        shutil.copy(source / name, target / name)
    for file_name, tensors in shards.items():
        save_file(tensors, str(target / file_name), metadata={"format": "pt"})
    if index:
        weight_map = {key: file_name for file_name, tensors in shards.items() for key in tensors}
        (target / layout.LLM_WEIGHTS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def test_strict_load_puts_every_stored_tensor_in_place(tts_dir, tts_model):
    stored = load_file(str(tts_dir / layout.LLM_WEIGHTS))
    params = dict(tts_model.named_parameters())
    assert set(params) == set(stored)
    assert "lm_head.weight" in stored and "model.layers.1.self_attn.k_proj.weight" in stored
    for name, tensor in stored.items():
        assert params[name].dtype == torch.float32 and params[name].device.type == "cpu"
        torch.testing.assert_close(params[name], tensor.float(), rtol=0, atol=0)
    # Untied: the head is its own tensor.
    assert not torch.equal(params["lm_head.weight"], params["model.embed_tokens.weight"])


def test_default_dtype_is_the_config_torch_dtype(chat_dir):
    model = load_step1(chat_dir)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_tampered_key_is_named(tts_dir, tmp_path):
    stored = load_file(str(tts_dir / layout.LLM_WEIGHTS))
    stored["model.layers.0.self_attn.qkv_proj.weight"] = stored.pop("model.layers.0.self_attn.q_proj.weight")
    folder = _copy_with_weights(tts_dir, tmp_path / "renamed", {layout.LLM_WEIGHTS: stored})
    with pytest.raises(ValueError, match=r"unexpected key 'model\.layers\.0\.self_attn\.qkv_proj\.weight'"):
        load_step1(folder, dtype="fp32")


def test_missing_key_is_named(tts_dir, tmp_path):
    stored = load_file(str(tts_dir / layout.LLM_WEIGHTS))
    del stored["lm_head.weight"]
    folder = _copy_with_weights(tts_dir, tmp_path / "missing", {layout.LLM_WEIGHTS: stored})
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): 'lm_head\.weight'"):
        load_step1(folder, dtype="fp32")


def test_wrong_shape_is_named(tts_dir, tmp_path):
    stored = load_file(str(tts_dir / layout.LLM_WEIGHTS))
    stored["model.layers.1.mlp.up_proj.weight"] = torch.zeros(64, 64, dtype=torch.bfloat16)
    folder = _copy_with_weights(tts_dir, tmp_path / "shape", {layout.LLM_WEIGHTS: stored})
    with pytest.raises(ValueError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight'.*shape \[64, 64\], expected \[128, 64\]"):
        load_step1(folder, dtype="fp32")


def test_sharded_checkpoint_loads_the_same_weights(tts_dir, tts_model, tmp_path):
    stored = load_file(str(tts_dir / layout.LLM_WEIGHTS))
    keys = sorted(stored)
    shards = {
        "model-00001-of-00002.safetensors": {k: stored[k] for k in keys[: len(keys) // 2]},
        "model-00002-of-00002.safetensors": {k: stored[k] for k in keys[len(keys) // 2 :]},
    }
    model = load_step1(_copy_with_weights(tts_dir, tmp_path / "sharded", shards), dtype=torch.float32)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, dict(tts_model.named_parameters())[name], rtol=0, atol=0)


def test_index_inconsistencies_are_rejected(tts_dir, tmp_path):
    stored = load_file(str(tts_dir / layout.LLM_WEIGHTS))
    folder = _copy_with_weights(tts_dir, tmp_path / "index", {layout.LLM_WEIGHTS: stored})
    index_path = folder / layout.LLM_WEIGHTS_INDEX
    index = json.loads(index_path.read_text())
    index["weight_map"]["lm_head.weight"] = "model-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="do not exist.*model-00002.safetensors"):
        load_step1(folder, dtype="fp32")
    shutil.copy(folder / layout.LLM_WEIGHTS, folder / "model-00002.safetensors")
    with pytest.raises(ValueError, match="'lm_head.weight' is in model-00001.safetensors but the index maps it"):
        load_step1(folder, dtype="fp32")


def test_bad_dtype_and_missing_folder(tts_dir, tmp_path):
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        load_step1(tts_dir, dtype="int8")
    with pytest.raises(ValueError, match="no Step1 config"):
        load_step1(tmp_path)


def test_writer_files_follow_the_published_layout(llm_root):
    for folder, heads, groups in ((layout.TTS_DIR, 8, 2), (layout.CHAT_DIR, 12, 4)):
        path = llm_root / folder
        config = json.loads((path / layout.LLM_CONFIG).read_text())
        assert set(config) == REAL_CONFIG_KEYS
        assert config["vocab_size"] == 74752 and config["eos_token_id"] == 3 and config["torch_dtype"] == "bfloat16"
        assert (config["num_attention_heads"], config["num_attention_groups"]) == (heads, groups)
        index = json.loads((path / layout.LLM_WEIGHTS_INDEX).read_text())
        with safe_open(str(path / layout.LLM_WEIGHTS), framework="pt") as reader:
            keys = set(reader.keys())
            total = sum(reader.get_tensor(k).numel() * 2 for k in keys)  # bf16
        assert set(index["weight_map"]) == keys and set(index["weight_map"].values()) == {layout.LLM_WEIGHTS}
        assert index["metadata"]["total_size"] == total
        tokenizer_config = json.loads((path / layout.LLM_TOKENIZER_CONFIG).read_text())
        assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer" and tokenizer_config["legacy"] is False
        assert tokenizer_config["model_max_length"] == 65536 and tokenizer_config["padding_side"] == "left"
        assert (tokenizer_config["pad_token"], tokenizer_config["unk_token"]) == ("<unk>", "<unk>")
    assert "add_bos_token" not in json.loads((llm_root / layout.TTS_DIR / layout.LLM_TOKENIZER_CONFIG).read_text())


def test_chat_template_renders_the_reference_prompt(chat_dir):
    tokenizer_config = json.loads((chat_dir / layout.LLM_TOKENIZER_CONFIG).read_text())
    assert tokenizer_config["add_bos_token"] is True
    template = jinja2.Environment().from_string(tokenizer_config["chat_template"])
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"}]
    rendered = template.render(messages=messages, add_generation_prompt=True)
    assert rendered == (
        "<|BOT|>system\nYou are a helpful assistant.<|EOT|><|BOT|>human\n你好<|EOT|>"
        "<|BOT|>assistant\nhi<|EOT|><|BOT|>human\nagain<|EOT|><|BOT|>assistant\n"
    )
    with_system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}]
    assert template.render(messages=with_system, add_generation_prompt=False) == (
        "<|BOT|>system\nbe brief<|EOT|><|BOT|>human\nx<|EOT|>"
    )


def test_real_variant_is_refused_but_its_config_is_available(tmp_path):
    with pytest.raises(ValueError, match="no 'real' variant"):
        write_llm(tmp_path, "real", seed=0)
    tts, chat = step1_config(layout.TTS_DIR, "real"), step1_config(layout.CHAT_DIR, "real")
    assert (tts.hidden_size, tts.num_attention_heads, tts.num_attention_groups, tts.num_hidden_layers) == (3072, 48, 4, 32)
    assert (chat.hidden_size, chat.intermediate_size, chat.num_attention_heads, chat.num_attention_groups) == (12288, 31232, 96, 8)
    with torch.device("meta"):
        params = sum(p.numel() for p in Step1ForCausalLM(tts).parameters())
    assert abs(params - 3.53e9) < 0.01e9  # 7.06 GB in bf16 with an untied head (Appendix A)
