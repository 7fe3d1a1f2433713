"""Tiny checkpoints open in transformers the way the published ones do (configuration module + auto_map)."""

from __future__ import annotations

import json

import transformers

from stepaudio.checkpoints.layout import LLM_CONFIG, LLM_CONFIG_MODULE
from stepaudio.testing.hf_compat import LLAMA_WEIGHTS, write_tiny_llama
from stepaudio.testing.llm import step1_config


def test_tiny_step1_folders_ship_the_configuration_module_named_in_auto_map(tts_dir, chat_dir):
    for folder in (tts_dir, chat_dir):
        auto_map = json.loads((folder / LLM_CONFIG).read_text())["auto_map"]
        module, _, class_name = auto_map["AutoConfig"].partition(".")
        assert (folder / f"{module}.py").name == LLM_CONFIG_MODULE and (folder / LLM_CONFIG_MODULE).is_file()
        assert class_name == "Step1Config"


def test_transformers_opens_the_tiny_step1_config_with_remote_code(tts_dir, chat_dir):
    for folder, dims in ((tts_dir, (64, 8, 2, 2)), (chat_dir, (96, 12, 4, 2))):
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert type(config).__name__ == "Step1Config" and config.model_type == "step1"
        assert (config.hidden_size, config.num_attention_heads, config.num_attention_groups, config.num_hidden_layers) == dims
        assert (config.vocab_size, config.max_seq_len, config.eos_token_id) == (74752, 32768, 3)


def test_the_llama_twin_has_the_step1_widths_and_an_untied_head(tmp_path):
    step1 = step1_config("Step-Audio-TTS-3B", "tiny")
    folder = write_tiny_llama(tmp_path, step1, seed=1)
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.tie_word_embeddings is False
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (64, 8, 2, 8)
    assert (folder / LLAMA_WEIGHTS).is_file()
