"""The batch runner without a server: manifest parsing (hostile lines included), text splitting, atomic writes and
the result manifest, resume, retries on overload, the adaptive concurrency, and a kill -9 mid-run then a resume
(a subprocess with a slow in-process transport)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import batch
from clients.batch_manifest import (
    MAX_LINE_BYTES,
    BadLine,
    Item,
    Results,
    atomic_write,
    read_manifest,
    remove_stale_temps,
    split_text,
    write_audiofolder_metadata,
)
from clients.batch_transport import ChatReply, ItemFailed, Overloaded

ROOT = Path(__file__).resolve().parents[2]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


class FakeTransport:
    """Deterministic audio from (text, seed); scripted failures; records every call."""

    name = "fake"

    def __init__(self, overload_first: int = 0, fail_texts=(), delay: float = 0.0):
        self.calls: list[tuple[str, object, int, int | None]] = []
        self.overload_left = overload_first
        self.fail_texts, self.delay = set(fail_texts), delay
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def voice(self, item: Item, default_voice: str):
        return ("clone", item.prompt_audio.name) if item.prompt_audio else item.voice or default_voice

    def synthesize(self, text, voice, seed, max_new_tokens):
        with self.lock:
            self.calls.append((text, voice, seed, max_new_tokens))
            self.active += 1
            self.peak = max(self.peak, self.active)
            overload = self.overload_left > 0
            self.overload_left -= overload
        try:
            time.sleep(self.delay)
            if overload:
                raise Overloaded("UNAVAILABLE: full")
            if text in self.fail_texts:
                raise ItemFailed("unknown speaker 'Nobody'")
            return fake_wave(text, seed), 22050
        finally:
            with self.lock:
                self.active -= 1

    def chat(self, item, voice, seed, max_new_tokens, tts_max_new_tokens):
        return ChatReply("reply to " + item.text, "", fake_wave(item.text, seed), 22050)

    def close(self):
        pass


def fake_wave(text: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(int(hashlib.sha256(f"{text}|{seed}".encode()).hexdigest()[:8], 16))
    return (0.1 * rng.standard_normal(2205 * (1 + len(text) % 7))).astype(np.float32)


def _runner(transport, out: Path, **options) -> batch.BatchRunner:
    controller = options.pop("controller", batch.AdaptiveConcurrency(limit=2, maximum=4))
    return batch.BatchRunner(transport, batch.BatchOptions(out_dir=out, quiet=True, **options), controller)


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ---- manifest ----------------------------------------------------------------------------------------------------
def test_jsonl_manifest_items_and_every_bad_line_with_its_reason(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "text": "你好。", "speaker": "Tingting", "tags": "高兴1, 四川话", "seed": 7, "max_new_tokens": 50},
        {"id": 12, "text": "hi", "prompt_wav": "voice.wav", "transcript": "what it says"},
        "",
        {"id": "../etc/passwd", "text": "x"},
        {"id": "b", "text": "x", "tags": ["Whispering"]},
        {"id": "c", "text": "x", "seed": -1},
        {"id": "a", "text": "again"},
        "[1, 2]",
        "{not json",
        {"id": "d", "text": "x", "prompt_audio": "v.wav"},
        {"id": "e", "text": "(高兴1)"},
        {"id": "f", "text": "x", "voice": "Tingting", "prompt_audio": "v.wav", "prompt_text": "t"},
        {"text": "no id"},
        {"id": "g", "text": "x", "seed": True},
    ])
    entries = list(read_manifest(manifest))
    items = [e for e in entries if isinstance(e, Item)]
    bad = {e.line: e.error for e in entries if isinstance(e, BadLine)}
    assert [i.id for i in items] == ["a", "12"]
    assert items[0].voice == "Tingting" and items[0].tags == ("高兴1", "四川话") and items[0].seed == 7
    assert items[0].styled_text == "(高兴1)(四川话)你好。" and items[0].max_new_tokens == 50
    assert items[1].prompt_audio == tmp_path / "voice.wav" and items[1].prompt_text == "what it says"
    assert "must be 1-128" in bad[4] and "unknown style tags" in bad[5] and "seed must be" in bad[6]
    assert "duplicate id 'a' (first on line 1)" in bad[7]
    assert "JSON object" in bad[8] and "not JSON" in bad[9] and "needs prompt_text" in bad[10]
    assert "no words to speak" in bad[11] and "not both" in bad[12] and "id is missing" in bad[13]
    assert "integer" in bad[14]
    assert len(bad) == 11


def test_csv_manifest_with_aliases_and_a_ragged_row(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,text,speaker,tags,seed\nx1,\"Hello, world.\",Tingting,高兴1;快速1,3\nx2,hi,,,\n"
                        "x3,a,b,c,d,e,f\n", encoding="utf-8")
    entries = list(read_manifest(manifest))
    assert isinstance(entries[0], Item) and entries[0].text == "Hello, world." and entries[0].tags == ("高兴1", "快速1")
    assert entries[0].seed == 3 and entries[1].voice is None and entries[1].seed is None
    assert isinstance(entries[2], BadLine) and "more fields" in entries[2].error


def test_hostile_manifest_lines_are_refused_without_stopping_the_rest(tmp_path):
    manifest = tmp_path / "m.jsonl"
    with open(manifest, "wb") as handle:
        handle.write(b'{"id": "big", "text": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
        handle.write(b'{"id": "latin", "text": "\xff\xfe"}\n')
        handle.write(b'{"id": "deep", "text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n")
        handle.write(json.dumps({"id": "ok", "text": "fine."}).encode() + b"\n")
        handle.write(json.dumps({"id": "long", "text": "字" * 20_001}).encode() + b"\n")
    entries = list(read_manifest(manifest))
    assert [e.id for e in entries if isinstance(e, Item)] == ["ok"]
    errors = [e.error for e in entries if isinstance(e, BadLine)]
    assert len(errors) == 4
    assert "longer than" in errors[0] and "not UTF-8" in errors[1] and "20001 characters" in errors[3]


def test_an_item_without_a_seed_gets_one_from_its_id():
    assert Item("a", "x").effective_seed == Item("a", "y").effective_seed != Item("b", "x").effective_seed
    assert Item("a", "x", seed=5).effective_seed == 5


# ---- splitting ---------------------------------------------------------------------------------------------------
def test_a_text_that_fits_is_sent_unchanged():
    assert split_text("(高兴1)你好。再见。", 200) == ["(高兴1)你好。再见。"]


def test_a_long_text_splits_at_sentence_ends_and_every_part_keeps_the_tags():
    sentences = [f"第{i}句话说得很长很长很长。" for i in range(30)]
    parts = split_text("(高兴1)(四川话)" + "".join(sentences), 100)
    assert len(parts) > 3 and all(len(p) <= 100 for p in parts)
    assert all(p.startswith("(高兴1)(四川话)") for p in parts)
    bodies = [p.removeprefix("(高兴1)(四川话)") for p in parts]
    assert "".join(bodies) == "".join(sentences)
    assert all(b.endswith("。") for b in bodies)  # cut only at sentence ends
    english = split_text("One sentence here. " * 20, 60)
    assert " ".join(english) == ("One sentence here. " * 20).strip() and all(len(p) <= 60 for p in english)


# ---- files -------------------------------------------------------------------------------------------------------
def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "a.wav"
    atomic_write(target, b"old")

    def broken_fsync(_fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic_write(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_results_drop_a_torn_last_line_and_check_each_file_by_its_hash(tmp_path):
    (tmp_path / "audio").mkdir()
    good, changed = tmp_path / "audio" / "a.wav", tmp_path / "audio" / "b.wav"
    good.write_bytes(b"aaaa")
    changed.write_bytes(b"bbbb")
    lines = [{"id": "a", "status": "done", "path": "audio/a.wav", "format": "wav", "sample_rate": 22050,
              "sha256": hashlib.sha256(b"aaaa").hexdigest()},
             {"id": "b", "status": "done", "path": "audio/b.wav", "format": "wav", "sample_rate": 22050,
              "sha256": hashlib.sha256(b"bbbb").hexdigest()}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "c", "sta')
    changed.write_bytes(b"bb")  # truncated after its line was written
    results = Results.open(tmp_path)
    assert (tmp_path / "results.jsonl").read_text().endswith("}\n")  # the torn line is gone
    assert results.finished("a", tmp_path, "wav", None) is not None
    assert results.finished("a", tmp_path, "flac", None) is None  # another format is asked now
    assert results.finished("a", tmp_path, "wav", 16000) is None
    assert results.finished("b", tmp_path, "wav", None) is None
    assert results.finished("c", tmp_path, "wav", None) is None


def test_stale_temp_files_are_removed_and_final_names_kept(tmp_path):
    (tmp_path / ".a.wav.tmp-1234").write_bytes(b"half")
    (tmp_path / "a.wav").write_bytes(b"whole")
    assert remove_stale_temps(tmp_path) == 1 and [p.name for p in tmp_path.iterdir()] == ["a.wav"]


# ---- the runner --------------------------------------------------------------------------------------------------
def _mixed_manifest(tmp_path: Path) -> Path:
    return _jsonl(tmp_path / "m.jsonl", [
        {"id": "p1", "text": "你好，世界。", "voice": "Tingting", "seed": 3},
        {"id": "p2", "text": "再见。", "tags": ["高兴1"], "seed": 4},
        {"id": "clone", "text": "Hello.", "prompt_audio": "me.wav", "prompt_text": "my words", "seed": 5},
        {"id": "bad", "text": "Nobody speaks.", "voice": "Nobody"},
        {"id": "long", "text": "这是一个很长的句子。" * 30, "seed": 9},
        {"id": "p1", "text": "duplicate"},
    ])


def test_a_mixed_manifest_makes_files_results_and_an_audiofolder(tmp_path):
    transport = FakeTransport(fail_texts={"Nobody speaks."})
    out = tmp_path / "out"
    summary = _runner(transport, out, audio_format="flac", sample_rate=16000, max_chars=60).run(_mixed_manifest(tmp_path))
    assert (summary.done, summary.failed, summary.skipped) == (4, 2, 0)
    records = {(r["id"], r["line"]): r for r in _results(out)}
    assert records[("bad", 4)]["status"] == "failed" and "unknown speaker" in records[("bad", 4)]["error"]
    assert "duplicate id" in records[("p1", 6)]["error"]
    done = {r["id"]: r for r in _results(out) if r["status"] == "done"}
    assert set(done) == {"p1", "p2", "clone", "long"}
    for record in done.values():
        data = (out / record["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        wave, rate = soundfile.read(out / record["path"], dtype="float32")
        assert rate == record["sample_rate"] == 16000 and record["format"] == "flac"
        assert wave.size / rate == pytest.approx(record["duration"], abs=1e-3)
    assert done["long"]["parts"] == len(split_text("这是一个很长的句子。" * 30, 60)) > 1
    assert done["clone"]["voice"] == "me.wav" and done["p2"]["voice"] == "Tingting"
    # the seed of part i is seed + i; one-part items are the single request with their seed
    long_calls = sorted(seed for text, _, seed, _ in transport.calls if "很长的句子" in text)
    assert long_calls == list(range(9, 9 + done["long"]["parts"]))
    assert ("(高兴1)再见。", "Tingting", 4, None) in transport.calls
    metadata = [json.loads(line) for line in (out / "audio" / "metadata.jsonl").read_text().splitlines()]
    _check_audiofolder(out / "audio", metadata)
    assert json.loads((out / "summary.json").read_text())["done"] == 4


def _check_audiofolder(folder: Path, metadata: list[dict]) -> None:
    """The audiofolder rules (datasets' docs): metadata.jsonl next to the files, a ``file_name`` relative to it
    for every audio file there, the same columns on every line, and each column of one JSON type."""
    audio_files = {p.name for p in folder.iterdir() if p.suffix in (".wav", ".flac", ".mp3")}
    assert {row["file_name"] for row in metadata} == audio_files
    assert len({tuple(row) for row in metadata}) == 1
    for column in metadata[0]:
        assert len({type(row[column]) for row in metadata}) == 1, column


def test_a_rerun_skips_finished_items_and_redoes_failed_and_damaged_ones(tmp_path):
    manifest = _mixed_manifest(tmp_path)
    out = tmp_path / "out"
    _runner(FakeTransport(fail_texts={"Nobody speaks."}), out).run(manifest)
    first = {r["id"]: r for r in _results(out) if r["status"] == "done"}
    (out / first["p2"]["path"]).write_bytes(b"RIFF")  # damaged by hand
    second = FakeTransport()
    summary = _runner(second, out).run(manifest)
    assert (summary.done, summary.skipped, summary.failed) == (2, 3, 1)  # p2 and bad redone; the duplicate again
    assert sorted(call[0] for call in second.calls) == ["(高兴1)再见。", "Nobody speaks."]
    final = _results(out)
    assert sorted(r["id"] for r in final if r["status"] == "done") == ["bad", "clone", "long", "p1", "p2"]
    assert len(final) == 6  # one line per item after the run, and the duplicate line's failure
    assert [r["sha256"] for r in final if r["id"] == "p1" and r["status"] == "done"] == [first["p1"]["sha256"]]


def test_overload_is_retried_with_backoff_and_halves_the_concurrency(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl", [{"id": f"i{n}", "text": f"句子{n}。"} for n in range(6)])
    transport = FakeTransport(overload_first=3)
    controller = batch.AdaptiveConcurrency(limit=4, maximum=4)
    summary = _runner(transport, tmp_path / "out", controller=controller, retry_delay_s=0.01).run(manifest)
    assert summary.done == 6 and summary.failed == 0 and summary.retries == 3
    assert controller.ceiling < 4


def test_overload_beyond_the_retries_is_recorded_as_failed(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl", [{"id": "only", "text": "句子。"}])
    summary = _runner(FakeTransport(overload_first=10), tmp_path / "out", retries=2, retry_delay_s=0.01).run(manifest)
    assert summary.failed == 1 and summary.retries == 2
    assert "UNAVAILABLE" in _results(tmp_path / "out")[0]["error"]


def test_the_runner_keeps_at_most_the_limit_in_flight(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl", [{"id": f"i{n}", "text": f"句子{n}。"} for n in range(12)])
    transport = FakeTransport(delay=0.02)
    controller = batch.AdaptiveConcurrency(limit=3, maximum=3, fixed=True)
    assert _runner(transport, tmp_path / "out", controller=controller).run(manifest).done == 12
    assert transport.peak == 3


def test_chat_mode_records_the_reply_text(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl", [{"id": "q1", "text": "你好吗？", "system": "be brief"}])
    summary = _runner(FakeTransport(), tmp_path / "out", chat=True).run(manifest)
    record = _results(tmp_path / "out")[0]
    assert summary.done == 1 and record["reply_text"] == "reply to 你好吗？" and record["status"] == "done"
    metadata = json.loads((tmp_path / "out" / "audio" / "metadata.jsonl").read_text())
    assert metadata["reply_text"] == "reply to 你好吗？" and metadata["file_name"] == "q1.wav"


# ---- adaptive concurrency ----------------------------------------------------------------------------------------
def test_concurrency_grows_while_throughput_grows_and_settles_when_it_stops():
    controller = batch.AdaptiveConcurrency(limit=1, maximum=16)
    rate_at = {1: 1.0, 2: 1.9, 3: 2.7, 4: 2.75, 5: 2.8}
    for _ in range(8):
        controller.observe(rate_at[controller.limit], None)
    assert controller.limit == 3 and controller.ceiling == 3


def test_concurrency_backs_off_on_overload_and_on_rising_queue_time():
    controller = batch.AdaptiveConcurrency(limit=8, maximum=16)
    controller.overloaded()
    assert controller.limit == 4 and controller.ceiling == 7
    settled = batch.AdaptiveConcurrency(limit=4, maximum=4)
    settled.observe(4.0, 100.0)
    settled.observe(3.0, 400.0)  # queue time ×4 while throughput fell: someone else is loading the server
    assert settled.limit == 3
    fixed = batch.AdaptiveConcurrency(limit=5, maximum=5, fixed=True)
    fixed.overloaded()
    fixed.observe(1.0, None)
    assert fixed.limit == 5


# ---- command line ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--format", "ogg"], "invalid choice"),
    (["--format", "mp3", "--sample-rate", "12345"], "mp3 sample rates"),
    (["--max-chars", "5000"], "max chars"),
    (["--concurrency", "0"], "--concurrency must be"),
    (["--triton-grpc", "h:1", "--base-url", "http://h"], "not allowed with"),
    (["--model", "tts"], "model must be"),
])
def test_the_command_refuses_bad_options(tmp_path, capsys, argv, message):
    manifest = _jsonl(tmp_path / "m.jsonl", [{"id": "a", "text": "x"}])
    with pytest.raises(SystemExit) as exit_info:
        batch.main([str(manifest), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ---- kill -9 -----------------------------------------------------------------------------------------------------
_KILLABLE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_batch import FakeTransport, _runner
    from clients import batch
    controller = batch.AdaptiveConcurrency(limit=3, maximum=3, fixed=True)
    _runner(FakeTransport(delay=0.05), Path(sys.argv[2]), controller=controller).run(Path(sys.argv[1]))
""")


def test_kill_9_mid_run_then_resume_loses_nothing_and_repeats_nothing(tmp_path):
    rows = [{"id": f"i{n:03d}", "text": f"第{n}句。" * (1 + n % 5), "seed": n} for n in range(60)]
    manifest = _jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    script = _KILLABLE.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script, str(manifest), str(out)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        results = out / "results.jsonl"
        if results.exists() and results.read_text().count("\n") >= 10:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    before = Results.open(out).done
    assert 10 <= len(before) < 60, "the kill came too late to test anything"
    transport = FakeTransport()
    summary = _runner(transport, out).run(manifest)
    assert summary.skipped == len(before) and summary.done == 60 - len(before) and summary.failed == 0
    assert not {text for text, *_ in transport.calls} & {rows[int(i[1:])]["text"] for i in before}
    final = _results(out)
    assert sorted(r["id"] for r in final) == [r["id"] for r in rows]  # none missing, none twice
    for record in final:
        wave, rate = soundfile.read(out / record["path"], dtype="float32")  # complete, readable files only
        expected = fake_wave(rows[int(record["id"][1:])]["text"], record["seed"])
        np.testing.assert_allclose(wave, expected, atol=1 / 32768 + 1e-6)
    assert not [p for p in (out / "audio").iterdir() if ".tmp-" in p.name]
    write_audiofolder_metadata(out, final)


# ---- fuzz --------------------------------------------------------------------------------------------------------
_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                            max_leaves=12)
_records = st.dictionaries(st.sampled_from(["id", "text", "voice", "speaker", "prompt_audio", "prompt_text", "tags",
                                            "seed", "max_new_tokens", "audio", "system", "other"]), _json_values,
                           max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_records.map(json.dumps).map(str.encode), st.binary(max_size=60)), max_size=6),
       csv_text=st.text(max_size=120))
def test_any_manifest_bytes_give_items_or_bad_lines_never_an_exception(tmp_path, lines, csv_text):
    jsonl = tmp_path / "f.jsonl"
    jsonl.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    csv_path = tmp_path / "f.csv"
    csv_path.write_text("id,text,tags,seed\n" + csv_text, encoding="utf-8", errors="surrogatepass")
    for path in (jsonl, csv_path):
        for entry in read_manifest(path):
            assert isinstance(entry, (Item, BadLine))
            if isinstance(entry, Item):
                entry.validate()  # what it yields as an item is valid
                assert "/" not in entry.id and not entry.id.startswith(".")
