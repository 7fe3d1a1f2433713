"""Step1 text tokenizer over the published ``tokenizer.model`` (SentencePiece BPE with byte fallback).

The reference loads it with ``AutoTokenizer`` → HF ``LlamaTokenizer`` (fast) with ``legacy: false``; this class
reproduces that behaviour with the ``sentencepiece`` runtime:

1. Added tokens — the special pieces ``<unk>`` ``<s>`` ``</s>`` and every user-defined piece (``<|EOT|>``,
   ``<|BOT|>``, ``<audio_N>``) — are cut out of the raw text first (leftmost-longest match), each becoming its
   single id.
2. Every text segment between them gets the Metaspace step: spaces become ``▁``, and only a segment that starts
   the text gets a ``▁`` prefix (``prepend_scheme="first"``: no phantom space after ``<|BOT|>``).
3. The segment is encoded by SentencePiece with its normalizer switched off (no dummy prefix, no whitespace
   folding, identity mapping — the HF tokenizer has no normalizer), so only the BPE merges and byte fallback run.

``decode`` follows the HF decoder chain: ``▁`` → space, consecutive ``<0xNN>`` pieces → UTF-8 (one U+FFFD per
byte when invalid), one leading space stripped; special tokens are kept as text (``skip_special_tokens=False``).

Id layout (docs/checkpoints.md#token-ids): 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, 3 ``<|EOT|>``, 4 ``<|BOT|>``,
``<audio_N>`` = 65536 + N for N in 0..5119.
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path
from typing import Iterable

import sentencepiece

from stepaudio.checkpoints.layout import LLM_SPM

UNK_ID, BOS_ID, EOS_ID, EOT_ID, BOT_ID = 0, 1, 2, 3, 4
SPECIAL_PIECES = ("<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>")
AUDIO_ID_OFFSET = 65536
NUM_AUDIO_TOKENS = 5120
META_SPACE = "\u2581"

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def spm_proto_module():
    """The generated ``sentencepiece_model.proto`` classes. transformers ships a copy for protobuf >= 4; the one in
    the ``sentencepiece`` wheel may be generated for a newer protobuf than the installed runtime."""
    from transformers.utils import sentencepiece_model_pb2_new

    return sentencepiece_model_pb2_new


def audio_piece(n: int) -> str:
    return f"<audio_{n}>"


class Step1Tokenizer:
    def __init__(self, model_file: Path | str):
        model_file = Path(model_file)
        try:
            data = model_file.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"no SentencePiece model at {model_file}") from None
        proto = spm_proto_module().ModelProto()
        try:
            proto.ParseFromString(data)
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            raise ValueError(f"{model_file} is not a SentencePiece model: {exc}") from None
        self._pieces = [p.piece for p in proto.pieces]
        self._types = [p.type for p in proto.pieces]
        self._check_layout(model_file)
        self._added = {
            piece: index
            for index, (piece, kind) in enumerate(zip(self._pieces, self._types))
            if kind in (UNKNOWN, CONTROL, USER_DEFINED)
        }
        self._added_lengths = sorted({len(p) for p in self._added}, reverse=True)
        self._added_starts = re.compile("[" + "".join(sorted({re.escape(p[0]) for p in self._added})) + "]")
        # BPE + byte fallback only: the HF tokenizer applies no SentencePiece normalization.
        spec = proto.normalizer_spec
        spec.name = "identity"
        spec.precompiled_charsmap = b""
        spec.add_dummy_prefix = False
        spec.remove_extra_whitespaces = False
        spec.escape_whitespaces = True
        self._sp = sentencepiece.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(proto.SerializeToString())

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> Step1Tokenizer:
        return cls(Path(folder) / LLM_SPM)

    def _check_layout(self, model_file: Path) -> None:
        needed = AUDIO_ID_OFFSET + NUM_AUDIO_TOKENS
        if len(self._pieces) < needed:
            raise ValueError(f"{model_file} has {len(self._pieces)} pieces; the Step1 layout needs at least {needed}")
        for index, piece in enumerate(SPECIAL_PIECES):
            if self._pieces[index] != piece:
                raise ValueError(f"{model_file}: id {index} is {self._pieces[index]!r}, expected {piece!r}")
        for n in (0, NUM_AUDIO_TOKENS - 1):
            if self._pieces[AUDIO_ID_OFFSET + n] != audio_piece(n):
                raise ValueError(f"{model_file}: id {AUDIO_ID_OFFSET + n} is not {audio_piece(n)!r}")

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    unk_id = property(lambda self: UNK_ID)
    pad_id = property(lambda self: UNK_ID, doc="the published config pads with <unk>")
    bos_id = property(lambda self: BOS_ID)
    eos_id = property(lambda self: EOS_ID, doc="</s>; the LLMs stop on <|EOT|> (eot_id)")
    eot_id = property(lambda self: EOT_ID)
    bot_id = property(lambda self: BOT_ID)

    def audio_id(self, n: int) -> int:
        """Id of ``<audio_n>``: linguistic codes are n = 0..1023, semantic codes n = 1024 + code."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < NUM_AUDIO_TOKENS:
            raise ValueError(f"audio token index must be an integer in [0, {NUM_AUDIO_TOKENS}), got {n!r}")
        return AUDIO_ID_OFFSET + n

    def id_to_piece(self, token_id: int) -> str:
        return self._pieces[self._check_ids([token_id])[0]]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids = [BOS_ID] if add_bos else []
        start = 0
        for match_start, piece in self._find_added(text):
            ids += self._encode_segment(text[start:match_start], at_text_start=start == 0)
            ids.append(self._added[piece])
            start = match_start + len(piece)
        ids += self._encode_segment(text[start:], at_text_start=start == 0)
        return ids

    def _find_added(self, text: str) -> Iterable[tuple[int, str]]:
        """Leftmost-longest, non-overlapping occurrences of added tokens."""
        position = 0
        while (candidate := self._added_starts.search(text, position)) is not None:
            at = candidate.start()
            piece = next((text[at : at + n] for n in self._added_lengths if text[at : at + n] in self._added), None)
            if piece is None:
                position = at + 1
                continue
            yield at, piece
            position = at + len(piece)

    def _encode_segment(self, segment: str, at_text_start: bool) -> list[int]:
        if not segment:
            return []
        segment = segment.replace(" ", META_SPACE)
        if at_text_start and not segment.startswith(META_SPACE):
            segment = META_SPACE + segment
        return self._sp.encode(segment)

    def decode(self, ids: Iterable[int]) -> str:
        ids = self._check_ids(ids)
        parts: list[str] = []
        pending: list[int] = []
        for token_id in ids:
            piece = self._pieces[token_id]
            if byte := _BYTE_PIECE.fullmatch(piece):
                pending.append(int(byte.group(1), 16))
                continue
            parts.append(_bytes_text(pending))
            pending = []
            parts.append(piece.replace(META_SPACE, " "))
        parts.append(_bytes_text(pending))
        text = "".join(parts)
        return text[1:] if text.startswith(" ") else text

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        checked = []
        for token_id in ids:
            if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
                raise ValueError(f"token ids must be integers, got {token_id!r}")
            if not 0 <= token_id < len(self._pieces):
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(self._pieces)})")
            checked.append(int(token_id))
        return checked


def _bytes_text(data: list[int]) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(data)
