from __future__ import annotations

import random

import pytest

from stepaudio.checkpoints.layout import LLM_SPM
from stepaudio.llm.tokenizer import Step1Tokenizer, spm_proto_module

TEXTS = [
    "hello world",
    " hello  world ",
    "Hello, this is a test!\nSecond line.\n",
    "你好，我们今天听音乐。",
    "（高兴1）(四川话)今天天气真好！",
    "<|BOT|>system\n作为一名卓越的声优演员<|EOT|>",
    "<audio_0><audio_5119>x <audio_12>",
    "a<s>b</s>c<unk>",
    "émoji 🎵 ok",
    "\n",
    "",
]


def test_special_ids_and_vocab(tokenizer):
    assert tokenizer.vocab_size == 74752
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.eot_id, tokenizer.bot_id) == (0, 1, 2, 3, 4)
    assert tokenizer.pad_id == 0
    for token_id, piece in enumerate(["<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>"]):
        assert tokenizer.id_to_piece(token_id) == piece
        assert tokenizer.encode(piece) == [token_id]
    assert tokenizer.encode("<|BOT|>human\n", add_bos=True)[:2] == [1, 4]


def test_audio_tokens_round_trip(tokenizer):
    for n in (0, 1, 1023, 1024, 4000, 5119):
        assert tokenizer.audio_id(n) == 65536 + n
        assert tokenizer.encode(f"<audio_{n}>") == [65536 + n]
        assert tokenizer.decode([65536 + n]) == f"<audio_{n}>"
    codes = [7, 1030, 512, 2047, 5119, 0]
    text = "".join(f"<audio_{n}>" for n in codes)
    assert tokenizer.encode(text) == [65536 + n for n in codes]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # Inside text: the literal is one id and the text after it gets no word-start space.
    ids = tokenizer.encode("<|BOT|>human\n<audio_3>ok<|EOT|>")
    assert ids[0] == 4 and 65539 in ids and ids[-1] == 3
    with pytest.raises(ValueError, match="audio token index"):
        tokenizer.audio_id(5120)


@pytest.mark.parametrize("text", [t for t in TEXTS if t])
def test_text_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < 74752 for i in ids)
    # Like HF's decoder, one leading space is taken to be the word-start marker and dropped.
    assert tokenizer.decode(ids) == (text[1:] if text.startswith(" ") else text)


def test_common_chinese_and_ascii_use_real_pieces(tokenizer):
    # Byte-fallback ids are 5..260; the tiny vocabulary covers ASCII and the TTS prompts' characters.
    for text in ("作为一名卓越的声优演员，请读文本。", "Hello, world!"):
        assert not [i for i in tokenizer.encode(text) if 5 <= i <= 260]
    assert all(5 <= i <= 260 for i in tokenizer.encode("🎵")[1:])  # 4 UTF-8 bytes after the "▁" piece


def test_tts_body_trick_strips_exactly_the_newline_prefix(tokenizer):
    # StepAudioTTS.tokenize: enc("\n" + text) minus len(enc("\n")) leading ids = text encoded mid-sequence.
    prefix = tokenizer.encode("\n", add_bos=True)
    body = tokenizer.encode("\n今天 hello", add_bos=True)[len(prefix) :]
    assert tokenizer.decode(body) == "今天 hello"
    assert body == tokenizer.encode("<|EOT|>今天 hello")[1:]


def test_bad_ids_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([5, 74752])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([-1])
    with pytest.raises(ValueError, match="must be integers"):
        tokenizer.decode([1.5])
    with pytest.raises(ValueError, match="must be a str"):
        tokenizer.encode(b"bytes")


def test_wrong_id_layout_is_rejected(tts_dir, tmp_path):
    proto = spm_proto_module().ModelProto()
    proto.ParseFromString((tts_dir / LLM_SPM).read_bytes())
    proto.pieces[3].piece, proto.pieces[4].piece = "<|BOT|>", "<|EOT|>"
    (tmp_path / LLM_SPM).write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match=r"id 3 is '<\|BOT\|>', expected '<\|EOT\|>'"):
        Step1Tokenizer.from_pretrained(tmp_path)
    (tmp_path / LLM_SPM).write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Step1Tokenizer.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def hf_tokenizer(tts_dir):
    transformers = pytest.importorskip("transformers")
    import transformers.convert_slow_tokenizer as convert

    # transformers prefers the proto module inside the sentencepiece wheel, which can be generated for a newer
    # protobuf than the installed runtime; point it at its own copy (the same proto) so it can read the file.
    original = convert.import_protobuf
    convert.import_protobuf = lambda *args, **kwargs: spm_proto_module()
    try:
        return transformers.LlamaTokenizer.from_pretrained(str(tts_dir), legacy=False)
    finally:
        convert.import_protobuf = original


def test_parity_with_hf_llama_tokenizer(tokenizer, hf_tokenizer):
    rng = random.Random(0)
    alphabet = list("abcdefghij theTHE\n\t  ,.!?<>|_") + list("你好我们今天音乐，。（）")
    alphabet += ["<|BOT|>", "<|EOT|>", "<audio_7>", "<s>", "</s>", "<unk>", "é", "🎵", "\u2581", "<audio_", "hello"]
    texts = TEXTS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) for _ in range(400)]
    for text in texts:
        assert tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), text
    pool = [0, 1, 2, 3, 4, 65536, 70655, *range(5, 261), *range(261, 1200)]
    for _ in range(400):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        assert tokenizer.decode(ids) == hf_tokenizer.decode(ids), ids
