"""The token-level prompt of Step-Audio-TTS-3B (reference ``StepAudioTTS.tokenize``).

    [BOS] BOT enc("system\\n" + SYS) EOT
          BOT enc("human\\n")     PROMPT_TEXT EOT  BOT enc("assistant\\n") PROMPT_CODE EOT
          BOT enc("human\\n")     TARGET_TEXT EOT  BOT enc("assistant\\n")   → generate audio ids

Role and system segments are encoded with the tokenizer's default special-token handling, which for the
published ``tokenizer_config.json`` (no ``add_bos_token`` key → LlamaTokenizer's default True) puts a BOS after
every BOT — that is what the model was prompted with, so we keep it. PROMPT_TEXT / TARGET_TEXT are encodings of
"\\n" + text with the ids of enc("\\n") removed from the front (drops BOS and the dummy-prefix newline piece).
"""

from __future__ import annotations

from typing import Protocol, Sequence

from stepaudio.tts.tags import MUSIC_HUMMING, StyledText, contract_data

BOS, EOT, BOT = 1, 3, 4


class TextTokenizer(Protocol):
    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...


def system_prompt(styled: StyledText, speaker_name: str) -> str:
    prompts = contract_data()["system_prompts"]
    if styled.music is not None:
        # Reference: humming if "哼唱" appears anywhere in the text. We decide by the routing tag itself, so a
        # RAP lyric that mentions humming still gets the RAP prompt (and the decoder it was routed to).
        return prompts["sys_prompt_for_vocal" if styled.music == MUSIC_HUMMING else "sys_prompt_for_rap"]
    if speaker_name:
        return prompts["sys_prompt_with_spk"].format(speaker_name)
    return prompts["sys_prompt_wo_spk"]


def build_tts_prompt(
    tokenizer: TextTokenizer,
    text: str,
    styled: StyledText,
    prompt_text: str,
    prompt_code: Sequence[int],
    speaker_name: str = "",
    add_bos_to_segments: bool = True,
) -> list[int]:
    """Prompt ids for one request; ``text`` is the full target text including its tags (the LLM reads them)."""

    def segment(s: str) -> list[int]:
        return tokenizer.encode(s, add_bos=add_bos_to_segments)

    def body(s: str) -> list[int]:
        newline = tokenizer.encode("\n", add_bos=add_bos_to_segments)
        ids = tokenizer.encode("\n" + s, add_bos=add_bos_to_segments)
        return ids[len(newline) :]

    human, assistant = segment("human\n"), segment("assistant\n")
    ids = [BOS, BOT] + segment("system\n" + system_prompt(styled, speaker_name)) + [EOT]
    ids += [BOT] + human + body(prompt_text) + [EOT]
    ids += [BOT] + assistant + list(prompt_code) + [EOT]
    ids += [BOT] + human + body(text) + [EOT]
    ids += [BOT] + assistant
    return ids
