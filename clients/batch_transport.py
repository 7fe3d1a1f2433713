"""The batch runner's two ways to the server, behind one interface: Triton gRPC directly (``ensemble_tts`` or
``tts_stream``; ``voice_chat`` in chat mode) and the OpenAI-compatible gateway (``/v1/audio/speech``,
``/v1/chat/completions``). Each call is safe from many threads at once.

A call either returns audio, raises ``Overloaded`` (the server said UNAVAILABLE / 429 / 503, or the connection broke:
the runner backs off and retries the item) or raises ``ItemFailed`` (the item's own fault, e.g. an unknown speaker:
recorded, never retried in this run).

Voices: a preset is a name. A cloned voice is read from its local file once per run; over gRPC its samples go with
each request as ``PROMPT_AUDIO`` (the served ``tts_frontend`` caches the prompt's features by the audio's hash, so the
server computes them once), through the gateway the file is uploaded to ``/v1/audio/voices`` once and the items
name the returned id; the runner deletes those voices when it ends.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from dataclasses import dataclass

import numpy as np

from clients import triton_io
from clients.batch_manifest import Item
from stepaudio_contract.client import string as _string

MAX_PROMPT_FILE_BYTES = 16 * 1024 * 1024  # checked before a prompt or chat audio file is read
MAX_PROMPT_SECONDS = 30.0  # the served front end's own prompt limit (stepaudio/tts/limits.py)
MAX_CHAT_AUDIO_SECONDS = 60.0  # the served tokenizer's limit
_RETRY_STATUSES = {429, 502, 503, 504}


class Overloaded(Exception):
    """Retry later: the server is full, restarting, or unreachable for now."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ItemFailed(Exception):
    """The server (or this client) refused the item itself; retrying would not help."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    transcript: str
    wave: np.ndarray
    sample_rate: int


def read_local_audio(path, max_seconds: float) -> tuple[np.ndarray, int]:
    """(float32 (channels, samples), rate) of a local file, refused by its size and header before it is decoded."""
    import soundfile

    try:
        if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise ItemFailed(f"{path.name} is larger than {MAX_PROMPT_FILE_BYTES} bytes")
        info = soundfile.info(str(path))
        if info.frames > max_seconds * info.samplerate:
            raise ItemFailed(f"{path.name} is {info.duration:.1f} s long; the server takes at most {max_seconds:g} s")
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
        raise ItemFailed(f"cannot read {path}: {exc}") from None
    if wave.size == 0:
        raise ItemFailed(f"{path.name} holds no samples")
    return np.ascontiguousarray(wave.T), int(rate)


class _VoiceCache:
    """One entry per distinct key, made once even when many threads ask at the same time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict = {}
        self._making: dict = {}

    def get(self, key, make):
        with self._lock:
            if key in self._entries:
                return self._entries[key]
            gate = self._making.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._entries:
                    return self._entries[key]
            value = make()  # a failure is not cached: the next item tries again
            with self._lock:
                self._entries[key] = value
            return value

    def values(self) -> list:
        with self._lock:
            return list(self._entries.values())


def _triton_error(exc: Exception) -> Exception:
    message = str(exc)
    if "UNAVAILABLE" in message or "Socket closed" in message or "failed to connect" in message.lower():
        return Overloaded(message)
    return ItemFailed(message)


class GrpcTransport:
    """Triton gRPC: ``ensemble_tts`` (offline, dynamic batching; RAP/humming texts go to ``ensemble_tts_music``) or
    ``tts_stream`` (decoupled, routes by itself); chat items go to ``voice_chat``."""

    name = "grpc"

    def __init__(self, url: str, model: str = "ensemble_tts", chat_model: str = "voice_chat", timeout: float = 600):
        if model not in ("ensemble_tts", "tts_stream"):
            raise ValueError(f"model must be ensemble_tts or tts_stream, got {model!r}")
        self.url, self.model, self.chat_model, self.timeout = url, model, chat_model, timeout
        self._local = threading.local()
        self._voices = _VoiceCache()

    def _client(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:  # one channel per worker thread: a gRPC stream is per client
            conn = self._local.conn = triton_io.client(self.url, "grpc")
        return conn

    def voice(self, item: Item, default_voice: str) -> dict[str, np.ndarray]:
        if item.prompt_audio is None:
            return {"SPEAKER": _string(item.voice or default_voice)}

        def load():
            wave, rate = read_local_audio(item.prompt_audio, MAX_PROMPT_SECONDS)
            return {"PROMPT_AUDIO": np.ascontiguousarray(wave.mean(axis=0)),
                    "PROMPT_SAMPLE_RATE": np.array([rate], np.int32), "PROMPT_TEXT": _string(item.prompt_text)}

        return self._voices.get((str(item.prompt_audio.resolve()), item.prompt_text), load)

    @staticmethod
    def _sampling(seed: int, max_new_tokens: int | None, tokens_name: str = "MAX_NEW_TOKENS") -> dict:
        tensors = {"SEED": np.array([seed], np.int64)}
        if max_new_tokens is not None:
            tensors[tokens_name] = np.array([max_new_tokens], np.int32)
        return tensors

    def synthesize(self, text: str, voice: dict, seed: int, max_new_tokens: int | None) -> tuple[np.ndarray, int]:
        from clients.tts import offline_model

        tensors = {"TEXT": _string(text), **voice, **self._sampling(seed, max_new_tokens)}
        try:
            if self.model == "tts_stream":
                chunks, rate = [], 22050
                for event in triton_io.grpc_stream(self._client(), "tts_stream", tensors, ["WAVEFORM", "SAMPLE_RATE"],
                                                   timeout=self.timeout):
                    chunks.append(np.asarray(event["WAVEFORM"], np.float32).reshape(-1))
                    rate = int(event["SAMPLE_RATE"].reshape(-1)[0])
                return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate
            batched = {name: value[None] for name, value in tensors.items()}
            out = triton_io.infer(self._client(), "grpc", offline_model(text), batched, ["WAVEFORM", "SAMPLE_RATE"])
        except Exception as exc:  # noqa: BLE001 - tritonclient and grpc raise several types; classified by message
            raise _triton_error(exc) from None
        return out["WAVEFORM"].reshape(-1).astype(np.float32), int(out["SAMPLE_RATE"].reshape(-1)[0])

    def chat(self, item: Item, voice: dict, seed: int, max_new_tokens: int | None,
             tts_max_new_tokens: int | None) -> ChatReply:
        history = [{"role": "system", "content": item.system}] if item.system else []
        tensors = {"HISTORY": _string(json.dumps(history, ensure_ascii=False)), **voice,
                   **self._sampling(seed, max_new_tokens)}
        if item.text.strip():
            tensors["TEXT"] = _string(item.styled_text)
        if item.audio is not None:
            wave, rate = read_local_audio(item.audio, MAX_CHAT_AUDIO_SECONDS)
            tensors["AUDIO"], tensors["SAMPLE_RATE"] = wave, np.array([rate], np.int32)
        if tts_max_new_tokens is not None:
            tensors["TTS_MAX_NEW_TOKENS"] = np.array([tts_max_new_tokens], np.int32)
        try:
            out = triton_io.infer(self._client(), "grpc", self.chat_model, tensors,
                                  ["REPLY_TEXT", "USER_TRANSCRIPT", "WAVEFORM", "SAMPLE_RATE"])
        except Exception as exc:  # noqa: BLE001 - classified by message, as above
            raise _triton_error(exc) from None
        return ChatReply(out["REPLY_TEXT"].reshape(-1)[0].decode(), out["USER_TRANSCRIPT"].reshape(-1)[0].decode(),
                         out["WAVEFORM"].reshape(-1).astype(np.float32), int(out["SAMPLE_RATE"].reshape(-1)[0]))

    def close(self) -> None:
        pass


def model_statistics(url: str) -> dict[str, dict]:
    """Per-model cumulative counters from Triton's statistics endpoint over gRPC: executions (batches), inferences
    (requests in them), and queue time (ns) with its request count."""
    conn = triton_io.client(url, "grpc")
    try:
        stats = conn.get_inference_statistics(as_json=True)
    finally:
        conn.close()
    table = {}
    for model in stats.get("model_stats", []):
        queue = model.get("inference_stats", {}).get("queue", {})
        table[model["name"]] = {"executions": int(model.get("execution_count", 0)),
                                "inferences": int(model.get("inference_count", 0)),
                                "queue_ns": int(queue.get("ns", 0)), "queue_count": int(queue.get("count", 0))}
    return table


class GatewayTransport:
    """The OpenAI-compatible gateway over HTTP (httpx): raw 16-bit PCM for speech, FLAC for chat replies."""

    name = "gateway"

    def __init__(self, base_url: str, api_key: str | None = None, model: str = "step-audio-tts",
                 chat_model: str = "step-audio-chat", timeout: float = 600):
        import httpx2 as httpx

        root = base_url.rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._httpx = httpx
        self._http = httpx.Client(base_url=root, headers=headers, timeout=timeout)
        self.model, self.chat_model = model, chat_model
        self._voices = _VoiceCache()

    def _post(self, path: str, **kwargs):
        try:
            response = self._http.post(path, **kwargs)
        except self._httpx.TransportError as exc:
            raise Overloaded(f"{path}: {exc!r}") from None
        if response.status_code < 400:
            return response
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        if response.status_code in _RETRY_STATUSES:
            retry_after = response.headers.get("retry-after")
            raise Overloaded(f"{response.status_code}: {message}",
                             float(retry_after) if retry_after and retry_after.isdigit() else None)
        raise ItemFailed(f"{response.status_code}: {message}")

    def voice(self, item: Item, default_voice: str) -> str:
        if item.prompt_audio is None:
            return item.voice or default_voice
        path = item.prompt_audio
        try:
            if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
                raise ItemFailed(f"{path.name} is larger than {MAX_PROMPT_FILE_BYTES} bytes")
            data = path.read_bytes()
        except OSError as exc:
            raise ItemFailed(f"cannot read {path}: {exc}") from None

        def upload():
            files = {"file": (path.name, data, "application/octet-stream")}
            form = {"transcript": item.prompt_text, "name": f"batch:{path.name}"[:100]}
            return self._post("/v1/audio/voices", files=files, data=form).json()["id"]

        return self._voices.get((hashlib.sha256(data).hexdigest(), item.prompt_text), upload)

    def synthesize(self, text: str, voice: str, seed: int, max_new_tokens: int | None) -> tuple[np.ndarray, int]:
        body = {"model": self.model, "input": text, "voice": voice, "response_format": "pcm", "seed": seed}
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        response = self._post("/v1/audio/speech", json=body)
        rate = int(response.headers.get("x-sample-rate", "22050"))
        return np.frombuffer(response.content, "<i2").astype(np.float32) / 32768.0, rate

    def chat(self, item: Item, voice: str, seed: int, max_new_tokens: int | None,
             tts_max_new_tokens: int | None) -> ChatReply:
        import soundfile

        content: list[dict] = []
        if item.text.strip():
            content.append({"type": "text", "text": item.styled_text})
        if item.audio is not None:
            read_local_audio(item.audio, MAX_CHAT_AUDIO_SECONDS)  # refused here by size and length, as over gRPC
            content.append({"type": "input_audio", "input_audio": {
                "data": base64.b64encode(item.audio.read_bytes()).decode(), "format": item.audio.suffix.lstrip(".")}})
        messages = ([{"role": "system", "content": item.system}] if item.system else []) + [
            {"role": "user", "content": content}]
        body = {"model": self.chat_model, "messages": messages, "modalities": ["text", "audio"],
                "audio": {"voice": voice, "format": "flac"}, "seed": seed}
        if max_new_tokens is not None:
            body["max_completion_tokens"] = max_new_tokens
        answer = self._post("/v1/chat/completions", json=body).json()
        message = answer["choices"][0]["message"]
        audio = message.get("audio") or {}
        wave, rate = np.zeros(0, np.float32), 22050
        if audio.get("data"):
            decoded, rate = soundfile.read(io.BytesIO(base64.b64decode(audio["data"])), dtype="float32", always_2d=True)
            wave = decoded.mean(axis=1)
        reply = message.get("content") or audio.get("transcript") or ""
        transcript = (answer.get("step_audio") or {}).get("user_transcript", "")
        return ChatReply(reply, transcript, wave, int(rate))

    def close(self) -> None:
        """Deletes the voices this run uploaded (they were only a cache for its items)."""
        for voice_id in self._voices.values():
            try:
                self._http.delete(f"/v1/audio/voices/{voice_id}")
            except self._httpx.TransportError:
                pass
        self._http.close()
