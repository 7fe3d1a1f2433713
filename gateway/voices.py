"""Uploaded voices in SQLite: mono float32 samples at the upload's own rate + transcript, per owner.

The exact samples go to Triton with each request (PROMPT_AUDIO); the served voice cache keys on their content, so
a voice's features are computed once per server, not once per request.

The owner is the caller's principal, an opaque string stored as given. Each owner has a quota (voices and sample
bytes), checked and written in one transaction so concurrent uploads cannot pass it together. Each thread has its
own connection (WAL: readers never wait for a writer), and listing reads metadata only (``length(samples)`` does
not load the blob), so a slow request or a large voice does not hold up anyone else.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.errors import APIError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    transcript TEXT NOT NULL,
    sample_rate INTEGER NOT NULL,
    samples BLOB NOT NULL,
    created_at INTEGER NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS voices_by_owner ON voices (owner, created_at, id)"
_USAGE = "SELECT count(*), coalesce(sum(length(samples)), 0) FROM voices WHERE owner = ?"
_SAMPLE_BYTES = 4  # float32
_BUSY_TIMEOUT_S = 10.0  # a writer waits this long for another writer's transaction


@dataclass(frozen=True)
class VoiceQuota:
    max_voices: int = 20
    max_bytes: int = 64 * 1024 * 1024  # sample bytes: ≈ 11 voices of 30 s at 48 kHz, 70 min at 16 kHz

    def validate(self) -> None:
        if self.max_voices < 1 or self.max_bytes < 1:
            raise ValueError("the voice quota must allow at least one voice and one byte")


@dataclass(frozen=True)
class VoiceInfo:
    """What a listing shows: everything but the samples."""

    id: str
    name: str
    transcript: str
    sample_rate: int
    sample_count: int
    created_at: int

    @property
    def seconds(self) -> float:
        return self.sample_count / self.sample_rate

    def public(self) -> dict:
        return {"id": self.id, "object": "audio.voice", "type": "uploaded", "name": self.name,
                "transcript": self.transcript, "seconds": round(self.seconds, 3), "sample_rate": self.sample_rate,
                "created_at": self.created_at}


@dataclass(frozen=True)
class Voice(VoiceInfo):
    samples: np.ndarray = None  # mono float32; always given (a default only because the base has fields first)


class VoiceStore:
    def __init__(self, path: Path, quota: VoiceQuota = VoiceQuota()):
        quota.validate()
        self.path, self.quota = Path(path), quota
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()  # guards the list only, never a query
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        with db:
            db.execute(_SCHEMA)
            db.execute(_INDEX)

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (asyncio.to_thread runs on a bounded pool, so connections are bounded too)."""
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread off only so that close() may close them all from the shutting-down thread.
            db = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_S, check_same_thread=False,
                                 isolation_level=None)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self._local.db = db
            with self._opened_lock:
                self._opened.append(db)
        return db

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for db in opened:
            db.close()
        self._local = threading.local()

    def add(self, owner: str, name: str, transcript: str, samples: np.ndarray, sample_rate: int) -> Voice:
        """Store a voice, or raise 429 ``voice_quota_exceeded`` when the owner's voices or bytes would pass the quota."""
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        blob = samples.astype("<f4").tobytes()
        voice = Voice("voice_" + secrets.token_hex(12), name, transcript, int(sample_rate), samples.size,
                      int(time.time()), samples)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # takes the write lock before counting: the check and the insert are one step
        try:
            count, used = db.execute(_USAGE, (owner,)).fetchone()
            if count + 1 > self.quota.max_voices:
                raise APIError(429, f"voice quota reached: at most {self.quota.max_voices} voices per key; delete one "
                               "first", code="voice_quota_exceeded", param="file")
            if used + len(blob) > self.quota.max_bytes:
                raise APIError(429, f"voice quota reached: {used + len(blob)} bytes of samples would pass the "
                               f"{self.quota.max_bytes} allowed per key; delete a voice first",
                               code="voice_quota_exceeded", param="file")
            db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (voice.id, owner, voice.name, voice.transcript, voice.sample_rate, blob, voice.created_at))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return voice

    def get(self, owner: str, voice_id: str) -> Voice | None:
        row = self._db().execute("SELECT id, name, transcript, sample_rate, samples, created_at FROM voices "
                                 "WHERE id = ? AND owner = ?", (voice_id, owner)).fetchone()
        if row is None:
            return None
        vid, name, transcript, rate, blob, created = row
        samples = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return Voice(vid, name, transcript, int(rate), samples.size, int(created), samples)

    def list(self, owner: str) -> list[VoiceInfo]:
        rows = self._db().execute("SELECT id, name, transcript, sample_rate, length(samples), created_at FROM voices "
                                  "WHERE owner = ? ORDER BY created_at, id", (owner,)).fetchall()
        return [VoiceInfo(vid, name, transcript, int(rate), int(size) // _SAMPLE_BYTES, int(created))
                for vid, name, transcript, rate, size, created in rows]

    def usage(self, owner: str) -> tuple[int, int]:
        """(voices, sample bytes) the owner holds."""
        count, used = self._db().execute(_USAGE, (owner,)).fetchone()
        return int(count), int(used)

    def delete(self, owner: str, voice_id: str) -> bool:
        return self._db().execute("DELETE FROM voices WHERE id = ? AND owner = ?", (voice_id, owner)).rowcount > 0
