"""``/v1/realtime``: a WebSocket voice session (OpenAI Realtime-style JSON events) bridged to the served
``realtime_session`` over one gRPC stream (one Triton sequence per socket). Events: docs/realtime.md.

Client → server: ``session.update`` (before the first audio: sample rate, voice, seed, speculation, reply length),
``input_audio_buffer.append`` (base64 PCM16 mono at the session's rate), ``session.close``. Server → client: the
session's events as ``realtime_session`` sends them, audio deltas as base64 PCM16 (``sample_rate`` in the event).
Closing the socket ends the sequence (END), so Triton frees the session at once.

Auth as the HTTP API (``Authorization: Bearer``), or, for browsers (which cannot set headers on a WebSocket), the
subprotocol ``openai-insecure-api-key.<key>`` as OpenAI's Realtime API accepts it. Audio faster than
``max_speed`` × real time is refused: a session is a microphone, not an upload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import time
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from gateway.errors import APIError
from gateway.limits import Auth, Limiter, refuse
from stepaudio_contract import client
from stepaudio_contract.limits import REALTIME_MAX_CHUNK_SECONDS, REALTIME_MAX_RATE, REALTIME_MIN_RATE

log = logging.getLogger("gateway.realtime")
KEY_SUBPROTOCOL = "openai-insecure-api-key."
MODEL = "realtime_session"
FINISH_TIMEOUT_S = 10.0  # after the sequence's end, how long its gRPC call may take to end before it is cancelled


@dataclass
class RealtimeLimits:
    default_rate: int = 16000
    max_chunk_seconds: float = REALTIME_MAX_CHUNK_SECONDS  # the served model's own limit per request
    max_speed: float = 4.0  # audio seconds per wall second, plus the burst below
    burst_seconds: float = 10.0
    max_message_bytes: int = 1_000_000
    max_new_tokens: int = 256
    tts_max_new_tokens: int = 1024
    # The session's stream silent this long is given up: the socket gets an error event and closes, its lease is
    # freed. An idle session ends by the served model's idle timeout (30 s by default) long before; a dead
    # ``realtime_session`` stub never answers again (stepaudio_contract/compat.py, entry stalled_bls_streams).
    stall_timeout_s: float = 120.0


def pcm16_to_float(data: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("audio must be base64") from exc
    if len(raw) % 2:
        raise ValueError("PCM16 audio must have an even number of bytes")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(wave: np.ndarray) -> str:
    return base64.b64encode((np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()).decode()


class SessionOptions:
    """What ``session.update`` may set before the first audio."""

    def __init__(self, limits: RealtimeLimits):
        self.limits = limits
        self.sample_rate, self.voice, self.seed, self.speculation = limits.default_rate, None, None, None
        self.max_new_tokens, self.tts_max_new_tokens = None, None

    def update(self, session: dict) -> None:
        if not isinstance(session, dict):
            raise ValueError("session must be an object")
        known = {"sample_rate", "input_audio_format", "voice", "seed", "speculation", "max_response_output_tokens",
                 "max_speech_tokens"}
        if unknown := sorted(set(session) - known):
            raise ValueError(f"unknown session fields {unknown}; known: {sorted(known)}")
        if session.get("input_audio_format", "pcm16") != "pcm16":
            raise ValueError("input_audio_format must be pcm16")
        rate = session.get("sample_rate", self.sample_rate)
        if not isinstance(rate, int) or not REALTIME_MIN_RATE <= rate <= REALTIME_MAX_RATE:
            raise ValueError(f"sample_rate must be an integer {REALTIME_MIN_RATE}..{REALTIME_MAX_RATE}")
        self.sample_rate = rate
        if "voice" in session:
            if not isinstance(session["voice"], str) or not 0 < len(session["voice"]) <= 100:
                raise ValueError("voice must be a preset voice name")
            self.voice = session["voice"]
        if "seed" in session:
            if not isinstance(session["seed"], int) or isinstance(session["seed"], bool):
                raise ValueError("seed must be an integer")
            self.seed = session["seed"]
        if "speculation" in session:
            if not isinstance(session["speculation"], bool):
                raise ValueError("speculation must be true or false")
            self.speculation = session["speculation"]
        for field, attr, cap in (("max_response_output_tokens", "max_new_tokens", self.limits.max_new_tokens),
                                 ("max_speech_tokens", "tts_max_new_tokens", self.limits.tts_max_new_tokens)):
            if field in session:
                value = session[field]
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= cap:
                    raise ValueError(f"{field} must be an integer 1..{cap}")
                setattr(self, attr, value)

    def tensors(self) -> dict[str, np.ndarray]:
        return client.session_start(self, self.sample_rate, self.voice)


def _error(message: str, code: str = "invalid_request", kind: str = "invalid_request_error") -> dict:
    return {"type": "error", "error": {"type": kind, "code": code, "message": message}}


class Bridge:
    """One socket ⇄ one Triton sequence."""

    def __init__(self, ws: WebSocket, triton, limits: RealtimeLimits):
        self.ws, self.triton, self.limits = ws, triton, limits
        self.options = SessionOptions(limits)
        self.sequence_id = secrets.randbits(62) | 1
        self.requests: asyncio.Queue = asyncio.Queue(maxsize=64)  # backpressure on a client faster than Triton
        self.started = self.ended = False
        self.close_code = 1000  # 1011 when the server side failed or stalled
        self.audio_seconds, self.opened_at = 0.0, time.monotonic()

    def _request(self, audio: np.ndarray, end: bool = False) -> dict:
        tensors = {"AUDIO": audio[None].astype(np.float32)}
        if not self.started:
            tensors |= self.options.tensors()
        request = {"model_name": MODEL, "inputs": client.infer_inputs(tensors), "sequence_id": self.sequence_id,
                   "sequence_start": not self.started, "sequence_end": end,
                   "outputs": client.requested_outputs(["EVENT", "WAVEFORM"])}
        self.started, self.ended = True, self.ended or end
        return request

    async def _requests(self):
        while (request := await self.requests.get()) is not None:
            yield request

    async def run(self) -> None:
        import grpc

        responses = self.triton.client.stream_infer(self._requests())
        reader = asyncio.create_task(self._read())
        ended = False  # the gRPC call is over (finished or failed): nothing of it is left to cancel
        shutting_down = False
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(anext(responses), self.limits.stall_timeout_s)
                except StopAsyncIteration:
                    ended = True
                    break
                except asyncio.TimeoutError:
                    log.warning("realtime stream %d sent nothing for %g s: closing the socket", self.sequence_id,
                                self.limits.stall_timeout_s)
                    self.close_code = 1011
                    await self._send(_error(f"the session's server sent nothing for {self.limits.stall_timeout_s:g} s; "
                                            "the session is closed, open a new one", "upstream_timeout", "server_error"))
                    break
                if error is not None:
                    await self._send(_error(str(error), code="upstream_error", kind="server_error"))
                    continue
                names = {o.name for o in result.get_response().outputs}
                if "EVENT" not in names:
                    continue
                event = json.loads(result.as_numpy("EVENT").reshape(-1)[0].decode())
                if "WAVEFORM" in names and event.get("type") == "response.audio.delta":
                    event["delta"] = float_to_pcm16(result.as_numpy("WAVEFORM").reshape(-1))
                await self._send(event)
                if event.get("type") == "session.closed":
                    break
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - Triton went away: tell the client, close
            current = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and current is not None and current.cancelling():
                shutting_down = True
                raise  # this handler is being cancelled (shutdown), not the gRPC call (grpc.aio raises the same)
            ended = isinstance(exc, (asyncio.CancelledError, grpc.aio.AioRpcError))
            log.warning("realtime stream failed: %r", exc)
            self.close_code = 1011
            await self._send(_error(f"the session's server stream failed: {type(exc).__name__}", "upstream_error",
                                    "server_error"))
        finally:
            reader.cancel()  # its own finally ends the sequence if the client did not, and the request side
            try:
                await reader
            except BaseException:  # noqa: BLE001 - cancelled or failed: the sequence end is what matters
                pass
            if ended or shutting_down:
                responses.cancel()  # a no-op for a call that is over; at shutdown nothing waits
            else:
                await self._finish(responses)

    async def _finish(self, responses) -> None:
        """Let the gRPC call end on its own: the request side is closed, so Triton ends it once the sequence's last
        request is answered. Cancelling a call Triton is still answering can crash a 2.51 server (compat.py:
        ``in_band_grpc_cancel``), so the cancel is only the fallback for a call that does not end in time."""
        try:
            async with asyncio.timeout(FINISH_TIMEOUT_S):
                async for _ in responses:
                    pass
        except Exception as exc:  # noqa: BLE001 - timed out or failed: the fallback below
            log.warning("realtime stream %d did not end within %g s of its sequence end (%s): cancelling it",
                        self.sequence_id, FINISH_TIMEOUT_S, type(exc).__name__)
        finally:
            responses.cancel()  # a no-op once the call has ended (and the fallback when cancelled meanwhile)

    async def _send(self, event: dict) -> None:
        try:
            await self.ws.send_text(json.dumps(event, ensure_ascii=False))
        except Exception:  # noqa: BLE001 - the client is gone; run() ends with the stream
            pass

    async def _read(self) -> None:
        try:
            while True:
                message = await self.ws.receive_text()
                if len(message) > self.limits.max_message_bytes:
                    await self._send(_error(f"messages are limited to {self.limits.max_message_bytes} bytes"))
                    continue
                try:
                    await self._handle(json.loads(message))
                except (ValueError, TypeError, KeyError) as exc:
                    await self._send(_error(str(exc)))
                if self.ended:
                    return
        except (WebSocketDisconnect, RuntimeError, KeyError):  # gone, or a binary frame: the session ends
            pass
        finally:
            try:  # the socket went first: END the sequence so Triton frees the session now
                if self.started and not self.ended:
                    self.requests.put_nowait(self._request(np.zeros(0, np.float32), end=True))
                self.requests.put_nowait(None)
            except asyncio.QueueFull:  # the stream is stuck: the server's idle timeout frees the session
                pass

    async def _handle(self, event: dict) -> None:
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "session.update":
            if self.started:
                raise ValueError("session.update must come before the first audio")
            self.options.update(event.get("session", {}))
            await self._send({"type": "session.updated", "session": {"sample_rate": self.options.sample_rate}})
        elif kind == "input_audio_buffer.append":
            audio = pcm16_to_float(event.get("audio", ""))
            seconds = audio.shape[0] / self.options.sample_rate
            if seconds > self.limits.max_chunk_seconds:
                raise ValueError(f"one append may carry at most {self.limits.max_chunk_seconds:g} s of audio")
            allowed = (time.monotonic() - self.opened_at) * self.limits.max_speed + self.limits.burst_seconds
            if self.audio_seconds + seconds > allowed:
                raise ValueError("audio arrives faster than real time; stream it as it is recorded")
            self.audio_seconds += seconds
            await self.requests.put(self._request(audio))
        elif kind == "session.close":
            await self.requests.put(self._request(np.zeros(0, np.float32), end=True))
        else:
            raise ValueError(f"unknown event type {kind!r}; send session.update, input_audio_buffer.append or "
                             "session.close")


def _key(ws: WebSocket, auth: Auth) -> tuple[str, str | None]:
    """(key id, the subprotocol to accept)."""
    if len(ws.headers.getlist("authorization")) > 1:
        raise APIError(401, "send one Authorization header", code="invalid_api_key")
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    carried = next((p for p in offered if p.startswith(KEY_SUBPROTOCOL)), None)
    if carried is not None:
        return auth.check("Bearer " + carried[len(KEY_SUBPROTOCOL):]), carried
    return auth.check(ws.headers.get("authorization")), (offered[0] if offered else None)


def mount_realtime(app: FastAPI, auth: Auth, limiter: Limiter, triton, limits: RealtimeLimits | None = None) -> None:
    """Add ``/v1/realtime`` to ``app``; ``triton()`` returns the gateway's ``gateway.triton.Triton``."""
    limits = limits or RealtimeLimits()

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):
        try:
            key, subprotocol = _key(ws, auth)
            lease = limiter.acquire(key)
        except APIError as exc:
            await refuse(ws.scope, ws.receive, ws.send, exc)
            return
        try:
            await ws.accept(subprotocol=subprotocol)
            from gateway.openai_realtime import bridge_for  # the OpenAI protocol, when the client asks for it

            bridge = bridge_for(ws, triton(), limits)
            await bridge.run()
            try:
                await ws.close(code=bridge.close_code)
            except Exception:  # noqa: BLE001 - already closed by the client
                pass
        finally:
            lease.release()
