"""A gateway without a server: settings for tests, a fake Triton that answers like the streaming models, and apps
built from one router or from ``create_app``."""

from __future__ import annotations

import io

import numpy as np
import soundfile
from fastapi import FastAPI

from gateway.config import Settings
from gateway.errors import install_error_handlers
from gateway.routes.deps import GatewayState

RATE = 22050


class FakeTriton:
    """Each stream: ``chunks`` responses of a short waveform (with text deltas and a transcript for the chat)."""

    def __init__(self, chunks: int = 2, not_ready: list[str] | None = None):
        self.chunks, self.missing, self.calls = chunks, not_ready or [], []

    async def stream(self, model: str, tensors: dict, outputs: list[str]):
        self.calls.append((model, tensors))
        for index in range(self.chunks):
            item = {"WAVEFORM": np.full((1, 512), 0.1, np.float32), "SAMPLE_RATE": np.array([RATE], np.int32)}
            if "TEXT_DELTA" in outputs:
                item["TEXT_DELTA"] = np.array([f"part{index} ".encode()], np.object_)
            yield item
        if "USER_TRANSCRIPT" in outputs:
            yield {"USER_TRANSCRIPT": np.array([b"heard"], np.object_)}

    async def not_ready(self, models: list[str], timeout_s: float = 5.0) -> list[str]:
        return [m for m in models if m in self.missing]

    async def close(self) -> None:
        pass


def settings(tmp_path, **changes) -> Settings:
    return Settings(triton_grpc="127.0.0.1:1", db=tmp_path / "voices.sqlite3", max_new_tokens=8, rate_per_minute=10_000,
                    max_concurrent=64, max_upload_bytes=600_000, max_upload_seconds=10, **changes)


def state(tmp_path, triton: FakeTriton | None = None, **changes) -> GatewayState:
    gateway = GatewayState.from_settings(settings(tmp_path, **changes))
    gateway.triton = triton or FakeTriton()
    return gateway


def one_router_app(router, gateway: GatewayState) -> FastAPI:
    """``router`` alone on a bare app with the error handlers: no middleware, no lifespan."""
    app = FastAPI()
    app.state.gateway = gateway
    install_error_handlers(app)
    app.include_router(router)
    return app


def full_app(tmp_path, triton: FakeTriton | None = None, **changes) -> FastAPI:
    """``create_app`` with its Triton client swapped for a fake (the lifespan makes a real one: replaced after)."""
    from gateway.app import create_app

    app = create_app(settings(tmp_path, **changes))
    app.state.gateway.triton = triton or FakeTriton()
    return app


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    wave = 0.3 * np.sin(np.arange(int(seconds * rate), dtype=np.float32) / 9)
    soundfile.write(out, wave, rate, format="WAV")
    return out.getvalue()
