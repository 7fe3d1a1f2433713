"""Uploaded voices in SQLite: mono float32 samples at the upload's own rate + transcript, per API key.

The exact samples go to Triton with each request (PROMPT_AUDIO); the served voice cache keys on their content, so
a voice's features are computed once per server, not once per request.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    transcript: str
    sample_rate: int
    samples: np.ndarray  # mono float32
    created_at: int

    @property
    def seconds(self) -> float:
        return self.samples.size / self.sample_rate

    def public(self) -> dict:
        return {"id": self.id, "object": "audio.voice", "type": "uploaded", "name": self.name,
                "transcript": self.transcript, "seconds": round(self.seconds, 3), "sample_rate": self.sample_rate,
                "created_at": self.created_at}


class VoiceStore:
    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop's threads; sqlite serialises, the lock keeps cursors apart.
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, owner: str, name: str, transcript: str, samples: np.ndarray, sample_rate: int) -> Voice:
        voice = Voice("voice_" + secrets.token_hex(12), name, transcript, int(sample_rate),
                      np.ascontiguousarray(samples, dtype=np.float32), int(time.time()))
        with self._lock, self._db:
            self._db.execute("INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (voice.id, owner, voice.name, voice.transcript, voice.sample_rate,
                              voice.samples.astype("<f4").tobytes(), voice.created_at))
        return voice

    def get(self, owner: str, voice_id: str) -> Voice | None:
        with self._lock:
            row = self._db.execute("SELECT id, name, transcript, sample_rate, samples, created_at FROM voices "
                                   "WHERE id = ? AND owner = ?", (voice_id, owner)).fetchone()
        return None if row is None else _voice(row)

    def list(self, owner: str) -> list[Voice]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, transcript, sample_rate, samples, created_at FROM voices "
                                    "WHERE owner = ? ORDER BY created_at, id", (owner,)).fetchall()
        return [_voice(row) for row in rows]

    def delete(self, owner: str, voice_id: str) -> bool:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM voices WHERE id = ? AND owner = ?", (voice_id, owner)).rowcount > 0


def _voice(row) -> Voice:
    vid, name, transcript, rate, blob, created = row
    return Voice(vid, name, transcript, int(rate), np.frombuffer(blob, dtype="<f4").astype(np.float32), int(created))
