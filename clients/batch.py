"""Batch synthesis: a manifest of texts in, an audio dataset out, at the server's throughput.

    python -m clients.batch lines.jsonl --out dataset/                                  # Triton gRPC, 127.0.0.1:8001
    python -m clients.batch lines.csv --out dataset/ --format flac --sample-rate 16000 --triton-grpc host:8001
    python -m clients.batch lines.jsonl --out dataset/ --base-url http://127.0.0.1:8080 --api-key KEY  # the gateway
    python -m clients.batch prompts.jsonl --out dialogues/ --chat                       # Step-Audio-Chat replies

Each manifest line (JSONL object or CSV row) has ``id`` and ``text``, and optionally ``voice`` (``speaker``) or a
local ``prompt_audio`` + ``prompt_text``, ``tags``, ``seed`` and ``max_new_tokens`` (chat mode: ``audio``, a
recording of the user's turn, and ``system``). The output folder gets ``audio/<id>.<format>``, ``results.jsonl`` (one
line per item: path, duration, sample rate, seed, voice, text, sha256, status, error), ``audio/metadata.jsonl`` (the
Hugging Face ``audiofolder`` layout) and ``summary.json``. A rerun skips the items already done; kill it at any time.
Details: docs/batch.md.
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clients.batch_manifest import (
    AUDIO_DIR,
    AUDIO_FORMATS,
    BadLine,
    Item,
    ManifestError,
    Results,
    atomic_write,
    read_manifest,
    remove_stale_temps,
    sha256,
    split_text,
    write_audiofolder_metadata,
)
from clients.batch_transport import GatewayTransport, GrpcTransport, ItemFailed, Overloaded, model_statistics

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # MPEG audio's sample rates
_SUBTYPES = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}


# ---- concurrency -------------------------------------------------------------------------------------------------
@dataclass
class AdaptiveConcurrency:
    """Hill climbing on measured throughput: one more request in flight per window while audio seconds per second
    grow by at least ``gain``; a step that does not pay is undone and becomes the ceiling. Overload (UNAVAILABLE,
    429, 503) halves the limit; a window whose mean server queue time rose by half while throughput fell takes
    one step back (another client is loading the server)."""

    limit: int = 2
    maximum: int = 16
    fixed: bool = False
    gain: float = 0.05
    ceiling: int = 0
    history: list = field(default_factory=list)  # (limit, audio s/s, queue ms or None) per window

    def __post_init__(self):
        self.limit = max(1, min(self.limit, self.maximum))
        self.ceiling = self.ceiling or self.maximum

    def window_items(self) -> int:
        return max(4, 2 * self.limit)

    def overloaded(self) -> None:
        if not self.fixed:
            self.ceiling = max(1, self.limit - 1)
            self.limit = max(1, self.limit // 2)

    def observe(self, rate: float, queue_ms: float | None) -> None:
        previous = self.history[-1] if self.history else None
        self.history.append((self.limit, rate, queue_ms))
        if self.fixed:
            return
        if previous is None:
            self.limit = min(self.limit + 1, self.ceiling)
            return
        last_limit, last_rate, last_queue = previous
        if self.limit > last_limit:  # the last step up: keep it only if it paid
            if rate >= last_rate * (1 + self.gain):
                self.limit = min(self.limit + 1, self.ceiling)
            else:
                self.limit = self.ceiling = last_limit
        elif queue_ms is not None and last_queue and queue_ms > 1.5 * last_queue and rate < last_rate * (1 - self.gain):
            self.limit = max(1, self.limit - 1)
        elif self.limit < last_limit or self.limit < self.ceiling:  # after a back-off (or below the ceiling): probe
            self.limit = min(self.limit + 1, self.ceiling)


# ---- audio -------------------------------------------------------------------------------------------------------
def encode_audio(wave: np.ndarray, rate: int, audio_format: str) -> bytes:
    """File bytes by libsndfile (``soundfile``): 16-bit WAV / FLAC, or MP3 (LAME inside libsndfile ≥ 1.1)."""
    import soundfile

    container, subtype = _SUBTYPES[audio_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(wave, -1.0, 1.0), rate, format=container, subtype=subtype)
    return buffer.getvalue()


def convert_rate(wave: np.ndarray, rate: int, target: int | None) -> tuple[np.ndarray, int]:
    if not target or target == rate:
        return wave, rate
    from stepaudio.audio.resample import resample  # torch-free, the band-limited sinc the front end uses

    return resample(wave, rate, target).astype(np.float32), target


# ---- the job -----------------------------------------------------------------------------------------------------
@dataclass
class BatchOptions:
    out_dir: Path
    audio_format: str = "wav"
    sample_rate: int | None = None  # None: the server's rate (22050)
    default_voice: str = "Tingting"
    max_chars: int = 200  # per request; longer texts are split at sentence ends and their audio joined
    max_new_tokens: int | None = None  # for items that name none; None: the server's default
    tts_max_new_tokens: int | None = None  # chat mode: speech ids per reply
    chat: bool = False
    retries: int = 6  # per item, on overload
    retry_delay_s: float = 0.5  # the first back-off; doubled per retry, at most 30 s
    audiofolder: bool = True
    quiet: bool = False

    def validate(self) -> None:
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"format must be one of {', '.join(AUDIO_FORMATS)}")
        if self.sample_rate is not None and not 8000 <= self.sample_rate <= 192000:
            raise ValueError("sample rate must be in [8000, 192000]")
        if self.audio_format == "mp3" and self.sample_rate not in (None, *MP3_RATES):
            raise ValueError(f"mp3 sample rates: {', '.join(map(str, MP3_RATES))}")
        if not 20 <= self.max_chars <= 1000:
            raise ValueError("max chars per request must be in [20, 1000] (the server takes at most 1000)")
        if self.retries < 0:
            raise ValueError("retries must be at least 0")


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    concurrency: int = 0
    retries: int = 0
    interrupted: bool = False
    concurrency_history: list = field(default_factory=list)
    statistics: dict = field(default_factory=dict)  # per model: executions and inferences during the run

    @property
    def audio_per_second(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "audio_hours": self.audio_seconds / 3600, "audio_per_second": self.audio_per_second}

    def line(self) -> str:
        return (f"done {self.done}, failed {self.failed}, skipped {self.skipped}; {self.audio_seconds / 3600:.3f} h of "
                f"audio in {self.wall_seconds:.1f} s ({self.audio_per_second:.2f} audio s/s) at concurrency "
                f"{self.concurrency}{' (interrupted)' if self.interrupted else ''}")


def _statistics_delta(before: dict, after: dict) -> dict:
    delta = {}
    for name, now in after.items():
        then = before.get(name, {})
        executions = now["executions"] - then.get("executions", 0)
        if executions > 0:
            delta[name] = {"executions": executions, "inferences": now["inferences"] - then.get("inferences", 0)}
    return delta


def _mean_queue_ms(before: dict, after: dict) -> float | None:
    ns = sum(m["queue_ns"] - before.get(n, {}).get("queue_ns", 0) for n, m in after.items())
    count = sum(m["queue_count"] - before.get(n, {}).get("queue_count", 0) for n, m in after.items())
    return ns / count / 1e6 if count > 0 else None


class BatchRunner:
    """Runs a manifest through a transport: a worker thread per request in flight, one writer (this thread) for
    the result manifest, so its lines never interleave."""

    def __init__(self, transport, options: BatchOptions, controller: AdaptiveConcurrency | None = None,
                 stats_url: str | None = None):
        options.validate()
        self.transport, self.options = transport, options
        self.controller = controller or AdaptiveConcurrency()
        self.stats_url = stats_url

    # -- one item (worker thread) --
    def _voice_label(self, item: Item) -> str:
        return item.prompt_audio.name if item.prompt_audio is not None else (item.voice or self.options.default_voice)

    def _base_record(self, item: Item) -> dict:
        return {"id": item.id, "line": item.line, "text": item.text, "voice": self._voice_label(item),
                "tags": list(item.tags), "seed": item.effective_seed}

    def process(self, item: Item) -> dict:
        """Synthesizes one item and writes its file; returns its result record. Raises Overloaded / ItemFailed."""
        options = self.options
        voice = self.transport.voice(item, options.default_voice)
        seed = item.effective_seed
        tokens = item.max_new_tokens or options.max_new_tokens
        extra: dict = {}
        if options.chat:
            reply = self.transport.chat(item, voice, seed, tokens, options.tts_max_new_tokens)
            wave, rate, parts = reply.wave, reply.sample_rate, 1
            extra = {"reply_text": reply.text, "transcript": reply.transcript}
        else:
            try:
                texts = split_text(item.styled_text, options.max_chars)
            except ManifestError as exc:
                raise ItemFailed(str(exc)) from None
            waves, rate = [], 22050
            for index, text in enumerate(texts):  # part i at seed + i: part 0 is the item's single request
                wave, rate = self.transport.synthesize(text, voice, (seed + index) % 2**63, tokens)
                waves.append(wave)
            wave, parts = np.concatenate(waves), len(texts)
        if wave.size == 0:
            raise ItemFailed("the server returned no audio")
        wave, rate = convert_rate(wave, rate, options.sample_rate)
        data = encode_audio(wave, rate, options.audio_format)
        relative = f"{AUDIO_DIR}/{item.id}.{options.audio_format}"
        atomic_write(options.out_dir / relative, data)
        return {**self._base_record(item), "status": "done", "path": relative, "format": options.audio_format,
                "duration": round(wave.size / rate, 4), "sample_rate": rate, "parts": parts, "sha256": sha256(data),
                "error": None, **extra}

    def _failed(self, item: Item | BadLine, error: str) -> dict:
        if isinstance(item, BadLine):
            return {"id": item.id, "line": item.line, "stage": "manifest", "status": "failed", "path": None, "error": error}
        return {**self._base_record(item), "status": "failed", "path": None, "error": error}

    def _attempt(self, item: Item) -> tuple[str, object]:
        try:
            return "done", self.process(item)
        except Overloaded as exc:
            return "overloaded", exc
        except ItemFailed as exc:
            return "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - one item's bug never stops the job; recorded with its type
            return "failed", f"{type(exc).__name__}: {exc}"

    # -- the job (this thread) --
    def run(self, manifest: Path) -> Summary:
        options, summary = self.options, Summary()
        start = time.perf_counter()
        (options.out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
        remove_stale_temps(options.out_dir / AUDIO_DIR)
        remove_stale_temps(options.out_dir)
        results = Results.open(options.out_dir)
        todo: list[Item] = []
        failed_records: list[dict] = []
        for entry in read_manifest(manifest, chat=options.chat):
            if isinstance(entry, BadLine):
                record = self._failed(entry, entry.error)
                failed_records.append(record)
                summary.failed += 1
            elif results.finished(entry.id, options.out_dir, options.audio_format, options.sample_rate):
                summary.skipped += 1
            else:
                todo.append(entry)
        before = self._statistics()
        window_before = before
        progress = self._progress(len(todo))
        waiting: list[tuple[float, int, Item, int]] = []  # (ready at, order, item, attempts so far): retries
        queue = list(reversed(todo))
        in_flight: dict[Future, tuple[Item, int]] = {}
        window_start, window_done, window_audio = time.perf_counter(), 0, 0.0
        executor = ThreadPoolExecutor(max_workers=self.controller.maximum, thread_name_prefix="batch")
        try:
            while queue or waiting or in_flight:
                now = time.perf_counter()
                while len(in_flight) < self.controller.limit and (queue or (waiting and waiting[0][0] <= now)):
                    if waiting and waiting[0][0] <= now:
                        _, _, item, attempts = heapq.heappop(waiting)
                    else:
                        item, attempts = queue.pop(), 0
                    in_flight[executor.submit(self._attempt, item)] = (item, attempts)
                timeout = max(0.05, min(1.0, waiting[0][0] - now)) if waiting else 1.0
                finished, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in finished:
                    item, attempts = in_flight.pop(future)
                    outcome, value = future.result()
                    if outcome == "overloaded" and attempts < options.retries:
                        self.controller.overloaded()
                        summary.retries += 1
                        delay = value.retry_after or min(30.0, options.retry_delay_s * 2**attempts)
                        heapq.heappush(waiting, (time.perf_counter() + delay, id(item), item, attempts + 1))
                        continue
                    if outcome == "done":
                        results.append(value)  # after the file is complete: the line is its proof
                        summary.done += 1
                        summary.audio_seconds += value["duration"]
                        window_done += 1
                        window_audio += value["duration"]
                    else:
                        record = self._failed(item, str(value))
                        results.append(record)
                        failed_records.append(record)
                        summary.failed += 1
                    progress.update(1)
                if window_done >= self.controller.window_items():
                    window_after = self._statistics()
                    elapsed = time.perf_counter() - window_start
                    self.controller.observe(window_audio / elapsed, _mean_queue_ms(window_before, window_after))
                    window_before, window_start, window_done, window_audio = window_after, time.perf_counter(), 0, 0.0
                progress.set_postfix_str(f"audio {summary.audio_seconds:.0f} s, failed {summary.failed}, "
                                         f"concurrency {self.controller.limit}", refresh=False)
        except KeyboardInterrupt:
            summary.interrupted = True
            executor.shutdown(wait=False, cancel_futures=True)
        else:
            executor.shutdown(wait=True)
        finally:
            progress.close()
        summary.wall_seconds = time.perf_counter() - start
        summary.concurrency = self.controller.limit
        summary.concurrency_history = [list(entry) for entry in self.controller.history]
        summary.statistics = _statistics_delta(before, self._statistics())
        results.compact(failed_records)
        if options.audiofolder:
            write_audiofolder_metadata(options.out_dir, list(results.done.values()))
        atomic_write(options.out_dir / "summary.json", json.dumps(summary.as_dict(), indent=1).encode())
        return summary

    def _statistics(self) -> dict:
        if self.stats_url is None:
            return {}
        try:
            return model_statistics(self.stats_url)
        except Exception:  # noqa: BLE001 - statistics only tune concurrency; a job never fails for them
            return {}

    def _progress(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, unit="item", disable=self.options.quiet, dynamic_ncols=True, file=sys.stderr)


# ---- command line ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clients.batch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("manifest", type=Path, help="JSONL or CSV (by its extension)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; a rerun resumes it)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--triton-grpc", metavar="HOST:PORT", help="Triton's gRPC endpoint (default 127.0.0.1:8001)")
    where.add_argument("--base-url", help="the OpenAI-compatible gateway, e.g. http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=os.environ.get("STEPAUDIO_API_KEY") or os.environ.get("OPENAI_API_KEY"),
                        help="gateway API key (default $STEPAUDIO_API_KEY or $OPENAI_API_KEY)")
    parser.add_argument("--model", help="gRPC: ensemble_tts (default) or tts_stream; gateway: its model name "
                                        "(default step-audio-tts, chat step-audio-chat)")
    parser.add_argument("--stats-grpc", metavar="HOST:PORT",
                        help="Triton gRPC for queue statistics in gateway mode (gRPC mode uses --triton-grpc)")
    parser.add_argument("--chat", action="store_true", help="prompts in, Step-Audio-Chat replies (text + speech) out")
    parser.add_argument("--format", dest="audio_format", choices=AUDIO_FORMATS, default="wav")
    parser.add_argument("--sample-rate", type=int, help="resample to this rate (default: the server's, 22050)")
    parser.add_argument("--voice", default="Tingting", help="preset voice of items that name none")
    parser.add_argument("--max-chars", type=int, default=200, help="characters per request; longer texts are split")
    parser.add_argument("--max-new-tokens", type=int, help="speech ids per request for items that name none")
    parser.add_argument("--tts-max-new-tokens", type=int, help="chat mode over gRPC: speech ids per reply")
    parser.add_argument("--concurrency", type=int, help="fixed requests in flight (default: adaptive)")
    parser.add_argument("--max-concurrency", type=int, default=16, help="ceiling of the adaptive concurrency")
    parser.add_argument("--retries", type=int, default=6, help="retries per item when the server is overloaded")
    parser.add_argument("--no-audiofolder", action="store_true", help="skip audio/metadata.jsonl")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; the summary line only")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        parser.error(f"no manifest at {args.manifest}")
    for name in ("concurrency", "max_concurrency"):
        if getattr(args, name) is not None and not 1 <= getattr(args, name) <= 256:
            parser.error(f"--{name.replace('_', '-')} must be in [1, 256]")
    options = BatchOptions(args.out, args.audio_format, args.sample_rate, args.voice, args.max_chars,
                           args.max_new_tokens, args.tts_max_new_tokens, args.chat, args.retries,
                           not args.no_audiofolder, args.quiet)
    try:
        options.validate()
    except ValueError as exc:
        parser.error(str(exc))
    if args.base_url:
        default_model = "step-audio-chat" if args.chat else "step-audio-tts"
        model = args.model or default_model
        transport = GatewayTransport(args.base_url, args.api_key, model=model, chat_model=model)
        stats_url = args.stats_grpc
    else:
        url = args.triton_grpc or "127.0.0.1:8001"
        try:
            transport = GrpcTransport(url, model=args.model or "ensemble_tts")
        except ValueError as exc:
            parser.error(str(exc))
        stats_url = url
    if args.concurrency:
        controller = AdaptiveConcurrency(limit=args.concurrency, maximum=args.concurrency, fixed=True)
    else:
        controller = AdaptiveConcurrency(limit=2, maximum=args.max_concurrency)
    try:
        summary = BatchRunner(transport, options, controller, stats_url).run(args.manifest)
    finally:
        transport.close()
    print(summary.line())
    if summary.interrupted:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # worker threads may still wait on the server; every finished result is already on disk
    return 0 if summary.failed == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
