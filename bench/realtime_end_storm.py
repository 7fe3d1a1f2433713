"""Reproduces Triton 2.51's crash on a cancelled gRPC call that it is still finishing (compat.py:
``in_band_grpc_cancel``), and shows that closing calls gracefully avoids it.

    python -m stepaudio_server --model-repository build/model_repository --grpc-port 18001 ... &
    python bench/realtime_end_storm.py --url 127.0.0.1:18001 --seconds 200 --sessions 8 --ending cancel
    python bench/realtime_end_storm.py --url 127.0.0.1:18001 --seconds 200 --sessions 8 --ending graceful

Each of ``--sessions`` workers runs short ``realtime_session`` sequences over gRPC one after another (START with
0.1 s of silence, 0–3 more chunks, END) and reads the responses to the ``session.closed`` event. Then it closes the
request side and either cancels the call at once (``cancel``: what the gateway did until 2026-12-08) or reads the
call to its end first (``graceful``: what it does now). The launcher's output says whether tritonserver died
("exited with signal SIGSEGV"). Prints the sessions run and the client-side errors by type.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepaudio_contract import client  # noqa: E402

MODEL = "realtime_session"


async def one_session(grpc, rng: random.Random, ending: str) -> None:
    requests: asyncio.Queue = asyncio.Queue()
    sequence = rng.getrandbits(62) | 1

    def request(audio: np.ndarray, start: bool = False, end: bool = False) -> dict:
        tensors = {"AUDIO": audio[None].astype(np.float32)}
        if start:
            tensors |= client.session_start({}, 16000, None)
        return {"model_name": MODEL, "inputs": client.infer_inputs(tensors), "sequence_id": sequence,
                "sequence_start": start, "sequence_end": end, "outputs": client.requested_outputs(["EVENT", "WAVEFORM"])}

    async def request_side():
        while (item := await requests.get()) is not None:
            yield item

    call = grpc.stream_infer(request_side())
    silence = np.zeros(1600, np.float32)
    await requests.put(request(silence, start=True))
    for _ in range(rng.randint(0, 3)):
        await requests.put(request(silence))
    await requests.put(request(np.zeros(0, np.float32), end=True))
    finished = False
    try:
        while True:
            result, error = await asyncio.wait_for(anext(call), 30)
            if error is None and "EVENT" in {o.name for o in result.get_response().outputs}:
                if json.loads(result.as_numpy("EVENT").reshape(-1)[0].decode()).get("type") == "session.closed":
                    break
    except StopAsyncIteration:
        finished = True
    await requests.put(None)  # the request side closes
    if ending == "graceful" and not finished:
        async for _ in call:
            pass
    call.cancel()  # "cancel": Triton may still be finishing the call; "graceful": a no-op, the call has ended


async def storm(url: str, seconds: float, sessions: int, ending: str, seed: int) -> tuple[int, dict[str, int]]:
    import tritonclient.grpc.aio as grpcaio

    grpc = grpcaio.InferenceServerClient(url)
    rng, deadline = random.Random(seed), time.monotonic() + seconds
    done, errors = 0, {}

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            try:
                await one_session(grpc, rng, ending)
                done += 1
            except Exception as exc:  # noqa: BLE001 - counted: a dead server answers UNAVAILABLE until it is back
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.5)

    try:
        await asyncio.gather(*(worker() for _ in range(sessions)))
    finally:
        await grpc.close()
    return done, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Triton gRPC address")
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--sessions", type=int, default=8, help="concurrent workers")
    parser.add_argument("--ending", choices=("cancel", "graceful"), default="graceful")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    done, errors = asyncio.run(storm(args.url, args.seconds, args.sessions, args.ending, args.seed))
    print(f"{done} sessions ended '{args.ending}' in {args.seconds:.0f} s with {args.sessions} at once; "
          f"client errors {errors or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
