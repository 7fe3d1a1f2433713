"""The batch runner's files: the input manifest (JSONL or CSV) as validated items, the result manifest (append-only,
one JSON line per finished item, fsynced), atomic audio writes, and the Hugging Face ``audiofolder`` metadata.

Crash safety rests on two rules: an audio file appears under its final name only complete (temp file, fsync, rename,
fsync of the folder), and its result line is appended only after that. A result line is therefore proof of a
complete file, and a rerun checks it by the file's sha256 before skipping the item.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from stepaudio.chat.speech import SentenceSplitter
from stepaudio.tts.tags import known_tags, parse_style_tags

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # an id is also a file name: no separators, no dot-files
MAX_LINE_BYTES = 1 << 20  # a manifest line (or CSV field) longer than this is refused, not loaded
MAX_ITEM_CHARS = 20_000  # text per item before splitting (≈ 20 TTS requests of the server's 1000 characters)
MAX_SEED = 2**63 - 1
AUDIO_FORMATS = ("wav", "flac", "mp3")
RESULTS_NAME = "results.jsonl"
AUDIO_DIR = "audio"
_TAG_SEPARATORS = re.compile(r"[\s,，、;；|()（）]+")
_TEMP_MARK = ".tmp-"


class ManifestError(ValueError):
    """A manifest line that cannot become an item; recorded as a failed result, never fatal to the job."""


@dataclass(frozen=True)
class Item:
    """One line of the manifest. ``voice`` is a preset speaker; ``prompt_audio`` + ``prompt_text`` a cloned voice
    (a local file, read by this client only). In chat mode ``text`` is the user's prompt and ``audio`` an optional
    recording of the user's turn."""

    id: str
    text: str
    line: int = 0
    voice: str | None = None
    prompt_audio: Path | None = None
    prompt_text: str | None = None
    tags: tuple[str, ...] = ()
    seed: int | None = None
    max_new_tokens: int | None = None
    audio: Path | None = None  # chat mode: the user's spoken turn
    system: str | None = None  # chat mode: a system prompt

    def validate(self, chat: bool = False, max_new_tokens_cap: int = 4096) -> None:
        if not ID_PATTERN.fullmatch(self.id):
            raise ManifestError(f"id {self.id!r} must be 1-128 of A-Z a-z 0-9 . _ - and start with a letter or digit")
        if not self.text.strip() and not (chat and self.audio is not None):
            raise ManifestError("text is empty")
        if len(self.text) > MAX_ITEM_CHARS:
            raise ManifestError(f"text is {len(self.text)} characters; the limit is {MAX_ITEM_CHARS}")
        if self.voice is not None and self.prompt_audio is not None:
            raise ManifestError("give either voice (a preset) or prompt_audio (a cloned voice), not both")
        if (self.prompt_audio is None) != (self.prompt_text is None or not self.prompt_text.strip()):
            raise ManifestError("prompt_audio needs prompt_text (its transcript), and prompt_text needs prompt_audio")
        known = {tag for group in known_tags().values() for tag in group}
        unknown = [tag for tag in self.tags if tag not in known]
        if unknown:
            raise ManifestError(f"unknown style tags {unknown}")
        if not chat:
            try:
                parse_style_tags(self.styled_text)
            except ValueError as exc:
                raise ManifestError(str(exc)) from None
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ManifestError(f"seed must be in [0, {MAX_SEED}]")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= max_new_tokens_cap:
            raise ManifestError(f"max_new_tokens must be in [1, {max_new_tokens_cap}]")

    @property
    def styled_text(self) -> str:
        """The text with the item's tags in front of its own (each tag once)."""
        return "".join(f"({tag})" for tag in self.tags) + self.text

    @property
    def effective_seed(self) -> int:
        """The item's seed, or one derived from its id: a rerun without seeds still makes the same audio."""
        if self.seed is not None:
            return self.seed
        return int.from_bytes(hashlib.sha256(self.id.encode()).digest()[:4], "big")


@dataclass
class BadLine:
    """A manifest line refused before it became an item."""

    line: int
    error: str
    id: str | None = None


_FIELD_ALIASES = {"speaker": "voice", "prompt_wav": "prompt_audio", "prompt_transcript": "prompt_text",
                  "transcript": "prompt_text", "style": "tags", "instructions": "tags"}
_FIELDS = {"id", "text", "voice", "prompt_audio", "prompt_text", "tags", "seed", "max_new_tokens", "audio", "system"}


def _integer(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ManifestError(f"{name} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise ManifestError(f"{name} must be an integer, got {value!r}") from None


def _text(value, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{name} must be a string")
    return value


def _tags(value) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(dict.fromkeys(t for t in _TAG_SEPARATORS.split(value) if t))
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(dict.fromkeys(t.strip("()（） ") for t in value if t.strip("()（） ")))
    raise ManifestError("tags must be a string or a list of strings")


def _local_path(value, name: str, base: Path) -> Path | None:
    text = _text(value, name)
    if text is None:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def item_from_record(record, line: int, base: Path) -> Item:
    """An Item from one manifest record (a JSON object or a CSV row); paths are relative to the manifest's folder."""
    if not isinstance(record, dict):
        raise ManifestError("a manifest line must be a JSON object")
    fields = {}
    for key, value in record.items():
        name = _FIELD_ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        if name in fields and value not in (None, ""):
            raise ManifestError(f"{key!r} repeats another column's field {name!r}")
        if name in _FIELDS:
            fields[name] = value
    identifier = fields.get("id")
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        identifier = str(identifier)
    identifier = _text(identifier, "id")
    if identifier is None:
        raise ManifestError("id is missing")
    return Item(
        id=identifier,
        text=_text(fields.get("text"), "text") or "",
        line=line,
        voice=_text(fields.get("voice"), "voice"),
        prompt_audio=_local_path(fields.get("prompt_audio"), "prompt_audio", base),
        prompt_text=_text(fields.get("prompt_text"), "prompt_text"),
        tags=_tags(fields.get("tags")),
        seed=_integer(fields.get("seed"), "seed"),
        max_new_tokens=_integer(fields.get("max_new_tokens"), "max_new_tokens"),
        audio=_local_path(fields.get("audio"), "audio", base),
        system=_text(fields.get("system"), "system"),
    )


def _jsonl_records(handle) -> Iterator[tuple[int, object]]:
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line unread into memory
                raw = handle.readline(MAX_LINE_BYTES)
            yield number, ManifestError(f"line is longer than {MAX_LINE_BYTES} bytes")
            continue
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield number, ManifestError(f"line is not UTF-8: {exc.reason} at byte {exc.start}")
        except json.JSONDecodeError as exc:
            yield number, ManifestError(f"not JSON: {exc.msg} at column {exc.colno}")
        except RecursionError:
            yield number, ManifestError("JSON nested too deeply")


def _csv_records(handle) -> Iterator[tuple[int, object]]:
    csv.field_size_limit(MAX_LINE_BYTES)
    reader = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8-sig", newline=""))
    try:
        for row in reader:
            if None in row:
                yield reader.line_num, ManifestError("row has more fields than the header")
                continue
            yield reader.line_num, row
    except csv.Error as exc:
        yield reader.line_num, ManifestError(f"CSV: {exc}")


def read_manifest(path: Path, chat: bool = False, max_new_tokens_cap: int = 4096) -> Iterator[Item | BadLine]:
    """Items in manifest order; each refused line (bad JSON, missing fields, a duplicate id, ...) as a BadLine."""
    path = Path(path)
    records = _csv_records if path.suffix.lower() in (".csv", ".tsv") else _jsonl_records
    seen: dict[str, int] = {}
    with open(path, "rb") as handle:
        try:
            for line, record in records(handle):
                if isinstance(record, ManifestError):
                    yield BadLine(line, str(record))
                    continue
                try:
                    item = item_from_record(record, line, path.parent)
                    item.validate(chat, max_new_tokens_cap)
                except ManifestError as exc:
                    identifier = record.get("id") if isinstance(record, dict) else None
                    yield BadLine(line, str(exc), identifier if isinstance(identifier, str) else None)
                    continue
                if item.id in seen:
                    yield BadLine(line, f"duplicate id {item.id!r} (first on line {seen[item.id]})", item.id)
                    continue
                seen[item.id] = line
                yield item
        except UnicodeDecodeError as exc:
            yield BadLine(0, f"manifest is not UTF-8: {exc.reason} at byte {exc.start}")


# ---- long texts --------------------------------------------------------------------------------------------------
def split_text(styled_text: str, max_chars: int) -> list[str]:
    """Parts of at most ``max_chars`` characters, cut at sentence ends, each with the text's style tags in front;
    a text that fits stays one part, unchanged (so it sounds exactly as a single request)."""
    if len(styled_text) <= max_chars:
        return [styled_text]
    styled = parse_style_tags(styled_text)
    prefix = "".join(f"({tag})" for tag in styled.tags)
    if len(prefix) >= max_chars // 2:
        raise ManifestError(f"style tags take {len(prefix)} of the {max_chars} characters a request may have")
    budget = max_chars - len(prefix)
    splitter = SentenceSplitter(budget)
    parts: list[str] = []
    for sentence in splitter.feed(styled.body) + splitter.flush():  # whole sentences, packed up to the budget
        joiner = " " if parts and parts[-1][-1:].isascii() and sentence[:1].isascii() else ""  # English needs it
        if parts and len(parts[-1]) + len(joiner) + len(sentence) <= budget:
            parts[-1] += joiner + sentence
        else:
            parts.append(sentence)
    return [prefix + part for part in parts]


# ---- files -------------------------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes) -> None:
    """``path`` holds either its old content or all of ``data``, whenever the process dies."""
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{secrets.token_hex(4)}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(folder: Path) -> int:
    """Temp files a killed run left behind (never under a final name, so never mistaken for results)."""
    removed = 0
    if folder.is_dir():
        for stale in folder.glob(f".*{_TEMP_MARK}*"):
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Results:
    """The result manifest: read at start (last line per id wins, a torn last line dropped), appended per item."""

    path: Path
    done: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path) -> Results:
        results = cls(Path(out_dir) / RESULTS_NAME)
        if results.path.exists():
            raw = results.path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            if len(complete) != len(raw):  # killed while appending: drop the partial line before appending more
                with open(results.path, "r+b") as handle:
                    handle.truncate(len(complete))
                    os.fsync(handle.fileno())
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    results._track(record)
        return results

    def _track(self, record: dict) -> None:
        if record.get("status") == "done":
            self.done[record["id"]] = record
        elif record.get("stage") != "manifest":  # a redone item failed: its older file is no longer its result
            self.done.pop(record["id"], None)

    def finished(self, item_id: str, out_dir: Path, audio_format: str, sample_rate: int | None) -> dict | None:
        """The earlier result of ``item_id`` when its file is still there, complete, and in the asked format."""
        record = self.done.get(item_id)
        if record is None or not isinstance(record.get("path"), str):
            return None
        if record.get("format") != audio_format or (sample_rate and record.get("sample_rate") != sample_rate):
            return None
        path = Path(out_dir) / record["path"]
        try:
            return record if sha256(path.read_bytes()) == record.get("sha256") else None
        except OSError:
            return None

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with open(self.path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        if isinstance(record.get("id"), str):
            self._track(record)

    def compact(self, failed: list[dict]) -> None:
        """One line per item: every finished item (earlier runs' too), then this run's failures."""
        lines = [json.dumps(r, ensure_ascii=False) for r in [*self.done.values(), *failed]]
        atomic_write(self.path, ("\n".join(lines) + "\n" if lines else "").encode())


AUDIOFOLDER_COLUMNS = ("id", "text", "voice", "seed", "duration", "sample_rate", "reply_text")


def write_audiofolder_metadata(out_dir: Path, done: list[dict]) -> Path:
    """``audio/metadata.jsonl`` for ``datasets.load_dataset("audiofolder", data_dir=out_dir / "audio")``: one line per
    audio file in that folder, ``file_name`` relative to it, the same columns (and types) on every line."""
    folder = Path(out_dir) / AUDIO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    columns = [c for c in AUDIOFOLDER_COLUMNS if any(c in record for record in done)]
    lines = []
    for record in sorted(done, key=lambda r: r["id"]):
        row = {"file_name": Path(record["path"]).relative_to(AUDIO_DIR).as_posix()}
        for column in columns:
            value = record.get(column)
            row[column] = "" if value is None and column in ("voice", "reply_text", "text") else value
        lines.append(json.dumps(row, ensure_ascii=False))
    path = folder / "metadata.jsonl"
    atomic_write(path, ("\n".join(lines) + "\n" if lines else "").encode())
    return path
