"""The front door against a live gateway and tritonserver: the key before the body, failed-auth limits, bounded
metrics under made-up methods, Origin/Host checks, named keys sharing voices (issue #23's review items)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx2 as httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.gateway.helpers import API_KEY
from tests.gateway.test_voices import upload, wav_file

pytestmark = pytest.mark.server


def test_an_unauthenticated_10_mb_body_is_answered_before_it_is_sent(gateway):
    """The 401 arrives while the client has sent 64 kB of the 10 MB it announced: nothing waited for the body."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n" + b"[" * 65536)
        start, reply = time.monotonic(), b""
        while b"invalid API key" not in reply and time.monotonic() - start < 5:  # headers and body may come apart
            reply += sock.recv(4096)
        assert time.monotonic() - start < 5
    assert reply.startswith(b"HTTP/1.1 401") and b"invalid API key" in reply


def test_failed_key_checks_are_rate_limited_per_address(start_gateway):
    gateway = start_gateway("--auth-failures-per-minute", "3")
    statuses = [httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer guess{i}"}).status_code
                for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    blocked = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert blocked.status_code == 429 and blocked.json()["error"]["code"] == "auth_rate_limit_exceeded"
    assert int(blocked.headers["retry-after"]) >= 1


def _request_series(gateway) -> list[str]:
    return [line for line in httpx.get(gateway.url + "/metrics").text.splitlines() if line.startswith("gateway_requests")]


def test_made_up_methods_add_no_metric_series(gateway):
    httpx.request("M00000AAAA", gateway.url + "/v1/models")
    httpx.get(gateway.url + "/no/such/path")
    before = _request_series(gateway)
    for index in range(50):
        httpx.request(f"M{index:05d}AAAA", gateway.url + f"/v1/x{index}", headers={"Authorization": f"Bearer {API_KEY}"})
        httpx.request(f"N{index:05d}BBBB", gateway.url + "/health")
    after = _request_series(gateway)
    assert len(after) - len(before) <= 8, set(after) - set(before)  # a few new (route, status) pairs, not 100
    assert not any("M000" in line or "/v1/x" in line for line in after)


def test_without_keys_foreign_hosts_and_origins_are_refused(start_gateway):
    gateway = start_gateway("--allowed-origin", "https://studio.example", keys=())
    assert httpx.get(gateway.url + "/v1/models").status_code == 200
    rebound = httpx.get(gateway.url + "/v1/models", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "forbidden_host"
    cross_site = httpx.post(gateway.url + "/v1/audio/voices", headers={"Origin": "https://attacker.example"},
                            files={"file": ("x.wav", b"RIFF")}, data={"transcript": "x"})
    assert cross_site.status_code == 403 and cross_site.json()["error"]["code"] == "forbidden_origin"
    for origin in (gateway.url, "https://studio.example"):
        assert httpx.get(gateway.url + "/v1/models", headers={"Origin": origin}).status_code == 200
    assert httpx.get(gateway.url + "/", headers={"Origin": gateway.url}).status_code == 200


def test_the_realtime_socket_refuses_a_foreign_origin(gateway):
    url = gateway.url.replace("http://", "ws://") + "/v1/realtime"

    async def attempt(origin: str):
        async with connect(url, origin=origin, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
            await ws.close()

    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        asyncio.run(attempt("https://attacker.example"))
    assert refused.value.response.status_code == 403  # with OpenAI's JSON error (the WebSocket denial response)
    assert json.loads(refused.value.response.body)["error"]["code"] == "forbidden_origin"
    asyncio.run(attempt(gateway.url))  # the gateway's own page may open it


def test_two_keys_of_one_name_see_the_same_voices(start_gateway):
    gateway = start_gateway(keys=("alice:sk-alice-1", "alice:sk-alice-2", "bob:sk-bob"))

    def session(key: str) -> httpx.Client:
        return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    with session("sk-alice-1") as old, session("sk-alice-2") as rotated, session("sk-bob") as other:
        created = upload(old, wav_file(seconds=1.0))
        assert created.status_code == 201, created.text

        def uploaded(client) -> list[str]:
            return [v["id"] for v in client.get("/v1/audio/voices").json()["data"] if v["type"] == "uploaded"]

        assert uploaded(rotated) == [created.json()["id"]] and uploaded(other) == []
