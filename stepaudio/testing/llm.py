"""Writer of the Step1 LLM folders (``Step-Audio-TTS-3B/`` and ``Step-Audio-Chat/``) in the published layout.

Each folder gets ``config.json`` (real keys), ``model-00001.safetensors`` (bf16, published key names) with
``model.safetensors.index.json``, ``tokenizer.model`` and ``tokenizer_config.json``. The "tiny" variant keeps the
real vocabulary (74752 ids, same special and audio ids) at small widths; the "real" variant is refused
(3.5 B / 132 B parameters do not belong on a build machine) — ``step1_config(folder, "real")`` gives the published
dims for building a model in memory.

The tiny ``tokenizer.model`` is a SentencePiece BPE model with the published id layout: 0 ``<unk>``, 1 ``<s>``,
2 ``</s>``, 3 ``<|EOT|>``, 4 ``<|BOT|>``, 256 byte-fallback pieces, a small hand-made vocabulary (ASCII, a few
English words, common CJK characters and punctuation), fillers up to 65536, ``<audio_0..5119>`` as user-defined
pieces at 65536.., fillers up to 74752.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from stepaudio.checkpoints import VariantUnavailable, register_writer
from stepaudio.checkpoints.layout import (
    CHAT_DIR,
    LLM_CONFIG,
    LLM_SPM,
    LLM_TOKENIZER_CONFIG,
    LLM_WEIGHTS,
    LLM_WEIGHTS_INDEX,
    TTS_DIR,
)
from stepaudio.llm.config import Step1Config
from stepaudio.llm.tokenizer import (
    AUDIO_ID_OFFSET,
    BYTE,
    CONTROL,
    META_SPACE,
    NORMAL,
    NUM_AUDIO_TOKENS,
    SPECIAL_PIECES,
    UNKNOWN,
    USER_DEFINED,
    audio_piece,
    spm_proto_module,
)
from stepaudio.testing.hf_compat import write_configuration_module
from stepaudio.testing.random_weights import random_state_dict

VOCAB_SIZE = 74752
MAX_SEQ_LEN = 32768

# Published dims (docs/checkpoints.md#step1-llm-folders) and small ones that still exercise GQA (2 and 3 query heads per group).
_DIMS = {
    (TTS_DIR, "real"): dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=48, num_attention_groups=4, num_hidden_layers=32),
    (CHAT_DIR, "real"): dict(hidden_size=12288, intermediate_size=31232, num_attention_heads=96, num_attention_groups=8, num_hidden_layers=88),
    (TTS_DIR, "tiny"): dict(hidden_size=64, intermediate_size=128, num_attention_heads=8, num_attention_groups=2, num_hidden_layers=2),
    (CHAT_DIR, "tiny"): dict(hidden_size=96, intermediate_size=160, num_attention_heads=12, num_attention_groups=4, num_hidden_layers=2),
}

_TOKENIZER_CONFIG = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "legacy": False,
    "model_max_length": 65536,
    "pad_token": "<unk>",
    "padding_side": "left",
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
}
# Written from the behaviour described in docs/reference-notes.md#chat-template (user → human, default system message, generation
# prompt); the published template text may differ in form but renders the same prompts.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|BOT|>system\\nYou are a helpful assistant.<|EOT|>' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set role = 'human' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<|BOT|>' + role + '\\n' + message['content'] + '<|EOT|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|BOT|>assistant\\n' }}{% endif %}"
)

_ENGLISH_WORDS = (
    "the and to of in is it you that this what how are for with on be have hello world test speech audio voice "
    "text system human assistant please thank yes no good"
).split()
_CJK_WORDS = "你好 我们 他们 今天 明天 时间 音乐 朋友 喜欢 谢谢 声音 文本 情感 标签 语调 哼唱 中文 英文".split()
# A hand-made list of common Chinese characters and punctuation (including every character of the TTS system
# prompts), so Chinese text tokenizes into real pieces rather than byte fallback.
_CJK_CHARS = (
    "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好"
    "都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此"
    "实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真"
    "听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书表原像感应记做边色常直期受题解结保今候风告步变科观设"
    "达住研队导始光强非件联式务决据图近集包运求片根切白改议选展程识传满何连容领级且花马飞转持提断油石格林许论形族写往语治统"
    "落准整品技节验易象效料社阵府存单斯际计王吧哪呢呀啊哦嗯吗喜欢乐朋友谢请您谁早晚昨星周末饭菜茶酒果米鱼肉鸡蛋牛羊猪狗猫鸟"
    "树草春夏秋冬雨雪云阳亮河湖路车船火票钱元块角买卖商店超医院校活休息睡觉床吃喝玩跑跳坐站唱歌舞笑哭爱恨怕累饿渴冷热红黄蓝"
    "绿黑灰紫粉快慢远左右南共城农村庭父母爸妈哥姐弟妹爷奶孩邻居音故影闻办希望认该需兴悲伤难害紧张放松安静闹漂聪努帮助系丰义"
    "亏交任优倒偏则刚卓历参叫史号含员哼圾垃型堆奏娇富屋川广座态或括指撒曲曾朗标注洋涵演物状甩畅盖确示礼福签类粤细绎绪考腻英"
    "言让读调越跌速钻镇陆限韩顶顺飘馆龟"
    "，。、？！：；（）“”‘’《》…—"
)


def step1_config(folder: str, variant: str) -> Step1Config:
    """Config of ``folder`` (``layout.TTS_DIR`` or ``layout.CHAT_DIR``) at ``variant`` ``"tiny"`` or ``"real"``."""
    if (folder, variant) not in _DIMS:
        raise ValueError(f"no Step1 config for folder {folder!r} variant {variant!r}")
    return Step1Config(vocab_size=VOCAB_SIZE, max_seq_len=MAX_SEQ_LEN, **_DIMS[(folder, variant)])


def _normal_pieces() -> list[str]:
    pieces = [META_SPACE] + [chr(c) for c in range(33, 127)]
    for word in _ENGLISH_WORDS:
        # Every prefix, with and without the word-start marker, so the BPE merges can reach the whole word.
        pieces += [word[:n] for n in range(2, len(word) + 1)]
        pieces += [META_SPACE + word[:n] for n in range(1, len(word) + 1)]
    pieces += list(_CJK_CHARS) + _CJK_WORDS
    return list(dict.fromkeys(pieces))  # ordered, unique


def build_tiny_spm() -> bytes:
    """Serialized ``tokenizer.model`` with the published id layout and ``VOCAB_SIZE`` pieces."""
    pb = spm_proto_module()
    model = pb.ModelProto()

    def add(piece: str, kind: int, score: float = 0.0) -> None:
        entry = model.pieces.add()
        entry.piece, entry.type, entry.score = piece, kind, score

    for index, piece in enumerate(SPECIAL_PIECES):
        add(piece, {0: UNKNOWN, 1: CONTROL, 2: CONTROL}.get(index, USER_DEFINED))
    for value in range(256):
        add(f"<0x{value:02X}>", BYTE)
    # BPE merge priority follows the score (higher first); -rank makes it the vocabulary order, as HF assumes.
    for rank, piece in enumerate(_normal_pieces()):
        add(piece, NORMAL, -float(rank))
    unused = 0
    while len(model.pieces) < AUDIO_ID_OFFSET:
        add(f"<unused_{unused}>", NORMAL, -1e9)
        unused += 1
    for n in range(NUM_AUDIO_TOKENS):
        add(audio_piece(n), USER_DEFINED)
    while len(model.pieces) < VOCAB_SIZE:
        add(f"<unused_{unused}>", NORMAL, -1e9)
        unused += 1

    trainer = model.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = VOCAB_SIZE
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    trainer.unk_piece, trainer.bos_piece, trainer.eos_piece = SPECIAL_PIECES[:3]
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


def write_step1_folder(folder: Path, config: Step1Config, seed: int, tokenizer_config: dict, spm: bytes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    state = random_state_dict(config, seed)
    weights = folder / LLM_WEIGHTS
    save_file(state, str(weights), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": {name: LLM_WEIGHTS for name in sorted(state)},
    }
    paths = [folder / LLM_CONFIG, weights, folder / LLM_WEIGHTS_INDEX, folder / LLM_SPM, folder / LLM_TOKENIZER_CONFIG]
    paths[0].write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths[2].write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    paths[3].write_bytes(spm)
    paths[4].write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    # The published folders reach their config class through auto_map; ours must too (trust_remote_code loaders).
    paths.append(write_configuration_module(folder))
    return paths


@register_writer("llm")
def write_llm(root: Path, variant: str, seed: int) -> list[Path]:
    if variant != "tiny":
        raise VariantUnavailable(
            f"the llm writer has no {variant!r} variant: real-size Step1 weights are 7 GB (TTS-3B) and 264 GB (Chat); "
            "build a model in memory from step1_config(folder, 'real') instead"
        )
    spm = build_tiny_spm()
    chat_tokenizer_config = {**_TOKENIZER_CONFIG, "add_bos_token": True, "chat_template": CHAT_TEMPLATE}
    written = write_step1_folder(Path(root) / TTS_DIR, step1_config(TTS_DIR, variant), seed, _TOKENIZER_CONFIG, spm)
    written += write_step1_folder(Path(root) / CHAT_DIR, step1_config(CHAT_DIR, variant), seed + 1, chat_tokenizer_config, spm)
    return written
