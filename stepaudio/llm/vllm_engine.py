"""The vLLM engine behind the ``GenerationEngine`` interface the served LLM models use.

Usage (same as ``TorchStep1Engine``)::

    engine = VllmEngine.from_checkpoint(folder, LLMEngineOptions(engine="vllm", tensor_parallel_size=8))
    stream = engine.submit(GenerationRequest(prompt_ids, SamplingParams(seed=7)))
    for token_id in stream: ...          # ids as vLLM produces them; the stop id is not yielded
    stream.cancel()                      # aborts the request in vLLM: its KV blocks and batch slot are freed
    engine.shutdown()

How it is hosted: vLLM's ``AsyncLLM`` runs in this process on an asyncio loop in a background thread; its engine
core (scheduler + model workers, one per GPU for tensor parallelism) runs in vLLM's own processes. ``submit`` is
called from any thread (the Triton model's ``execute``), hands the request to the loop and waits only until vLLM
accepted it, so vLLM's own validation errors reach the caller as ``ValueError``. One pump task per request moves
vLLM's delta outputs into a ``TokenStream``; ``TokenStream.cancel()`` cancels that task, which aborts the request.

Sampling is mapped to vLLM's (``vllm_sampling_params``): temperature (0 = greedy), top-k (0 = off on both sides;
our default 50 is passed explicitly), top-p, seed (vLLM keeps a generator per request, so a request's samples do
not depend on its batch), ``max_tokens``, the stop id as ``stop_token_ids`` (dropped from the output),
``allowed_token_ranges`` as ``allowed_token_ids``, and the reference's repetition-aware rule as
``RepetitionAwareLogitsProcessor`` (a vLLM logits processor class, per-request settings in ``extra_args``). vLLM
applies them in our order: allowed ids → repetition rule → temperature → top-k → top-p.

Step1 checkpoints need ``trust_remote_code`` (``configuration_step1.py``), ``hf_overrides={"tie_word_embeddings":
False}`` (the published config lacks the key and vLLM's Step1 then ties ``lm_head`` to the embeddings) and the
``TRITON_ATTN`` attention backend (the only one with ALiBi-sqrt; GPU only). ``from_checkpoint`` sets all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from pathlib import Path
from typing import Sequence

import torch
from vllm import SamplingParams as VllmSamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from stepaudio.checkpoints.layout import LLM_CONFIG
from stepaudio.llm.config import MODEL_TYPE as STEP1_MODEL_TYPE
from stepaudio.llm.engine import (
    FINISH_CANCELLED,
    FINISH_EOS,
    FINISH_ERROR,
    FINISH_LENGTH,
    GenerationRequest,
    TokenStream,
)
from stepaudio.llm.engine_config import STEP1_ATTENTION_BACKEND, LLMEngineOptions
from stepaudio.llm.sampling import SamplingParams, apply_repetition_rule

# Keys of vLLM ``SamplingParams.extra_args`` read by ``RepetitionAwareLogitsProcessor``.
REPETITION_WINDOW, REPETITION_THRESHOLD = "stepaudio_repetition_window", "stepaudio_repetition_threshold"
_LOGITS_PROCESSOR = "stepaudio.llm.vllm_engine:RepetitionAwareLogitsProcessor"  # imported by vLLM's engine core
_FINISH_REASONS = {"stop": FINISH_EOS, "length": FINISH_LENGTH, "abort": FINISH_CANCELLED}


class RepetitionAwareLogitsProcessor(AdapterLogitsProcessor):
    """The reference's repetition-aware rule inside vLLM's sampler (``sampling.apply_repetition_rule``): the last
    id is banned for this step when it fills more than ``threshold`` of the last ``window`` ids of prompt + output.
    Requests without the ``extra_args`` keys are untouched."""

    def is_argmax_invariant(self) -> bool:
        return False  # it bans ids, so greedy decoding must see it too (as in HF greedy search)

    def new_req_logits_processor(self, params):
        args = params.extra_args or {}
        threshold = float(args.get(REPETITION_THRESHOLD, 0.0))
        if threshold <= 0:
            return None
        window = int(args[REPETITION_WINDOW])

        def ban_repeat(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            # Only the window's tail is needed: never copy a 30k-id prompt per step.
            tail = list(output_ids[-window:])
            if len(tail) < window:
                tail = list(prompt_ids[len(prompt_ids) - (window - len(tail)) :]) + tail
            return apply_repetition_rule(logits, tail, window, threshold)

        return ban_repeat


@contextlib.contextmanager
def _as_value_error():
    # vLLM's request validation errors are not ValueError (vllm.exceptions); the adapters answer ValueError with
    # INVALID_ARG, so bad input stays a client error whichever side finds it.
    try:
        yield
    except VLLMClientError as exc:
        raise ValueError(str(exc)) from exc


def allowed_token_ids(ranges: Sequence[tuple[int, int]] | None, vocab_size: int) -> list[int] | None:
    if ranges is None:
        return None
    for low, high in ranges:
        if high > vocab_size:
            raise ValueError(f"allowed token range ({low}, {high}) reaches past the vocabulary ({vocab_size})")
    return sorted({i for low, high in ranges for i in range(low, high)})


def vllm_sampling_params(
    params: SamplingParams, *, eos_token_id: int, max_tokens: int, vocab_size: int
) -> VllmSamplingParams:
    """Our ``SamplingParams`` as vLLM's; ``max_tokens`` is ``max_new_tokens`` capped by the room left in the
    context (vLLM rejects a request whose prompt + max_tokens exceeds max_model_len; we stop at the limit)."""
    params.validate()
    extra = None
    if params.repetition_threshold > 0:
        extra = {REPETITION_WINDOW: params.repetition_window, REPETITION_THRESHOLD: float(params.repetition_threshold)}
    with _as_value_error():
        return VllmSamplingParams(
            n=1,
            temperature=float(params.temperature),
            top_k=params.top_k,
            top_p=float(params.top_p),
            seed=params.seed,
            max_tokens=max_tokens,
            stop_token_ids=[eos_token_id],
            ignore_eos=True,  # the stop id above is the only stop; the model's own eos setting plays no part
            allowed_token_ids=allowed_token_ids(params.allowed_token_ranges, vocab_size),
            extra_args=extra,
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,
        )


class VllmTokenStream(TokenStream):
    """A ``TokenStream`` whose ``cancel()`` also aborts the request in vLLM (not only at the next output)."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop):
        super().__init__(request_id)
        self._loop = loop
        self._task: asyncio.Task | None = None

    def cancel(self) -> None:
        super().cancel()
        if not self.finished:
            try:
                self._loop.call_soon_threadsafe(self._cancel_task)
            except RuntimeError:  # the loop is closed: the engine is shut down and finished every stream
                pass

    def _cancel_task(self) -> None:  # on the loop
        if self._task is not None:
            self._task.cancel()


def _checkpoint_config(path: Path) -> dict:
    try:
        return json.loads((path / LLM_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path / LLM_CONFIG}: {exc}") from None


def engine_args(
    checkpoint: Path | str,
    options: LLMEngineOptions,
    *,
    dtype: str | None = None,
    max_batch_size: int = 8,
    seed: int = 0,
    **overrides,
) -> AsyncEngineArgs:
    """vLLM's engine arguments for ``checkpoint``; Step1 checkpoints get remote code, the untied head and the
    ALiBi-sqrt attention backend. ``overrides`` go to ``AsyncEngineArgs`` as they are (tests: small KV caches)."""
    options.validate()
    path = Path(checkpoint)
    config = _checkpoint_config(path)
    step1 = config.get("model_type") == STEP1_MODEL_TYPE
    backend = options.attention_backend
    if backend == "auto":
        backend = STEP1_ATTENTION_BACKEND if step1 else None
    kwargs = dict(
        model=str(path),
        skip_tokenizer_init=True,  # ids in, ids out: the served models keep their own tokenizers
        trust_remote_code=step1,
        hf_overrides={"tie_word_embeddings": False} if step1 else {},
        dtype=dtype or "auto",
        tensor_parallel_size=options.tensor_parallel_size,
        pipeline_parallel_size=options.pipeline_parallel_size,
        distributed_executor_backend=options.distributed_executor_backend,
        max_model_len=options.max_model_len,
        gpu_memory_utilization=options.gpu_memory_utilization,
        max_num_seqs=max_batch_size,
        enforce_eager=options.enforce_eager,
        kv_cache_dtype=options.kv_cache_dtype,
        attention_backend=backend,
        logits_processors=[_LOGITS_PROCESSOR],
        generation_config="vllm",  # sampling comes from our requests, never from generation_config.json
        seed=seed,
        disable_log_stats=True,
    )
    kwargs.update(overrides)
    return AsyncEngineArgs(**kwargs)


class VllmEngine:
    """``GenerationEngine`` on vLLM's ``AsyncLLM``: continuous batching, paged KV cache, tensor/pipeline parallel."""

    def __init__(self, args: AsyncEngineArgs, eos_token_id: int = 3):
        self.eos_token_id = eos_token_id
        self._ids = itertools.count()
        self._streams: set[VllmTokenStream] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()
        try:
            # Built on the loop's thread: AsyncLLM binds its IPC sockets and output task to the running loop.
            self._llm: AsyncLLM = self._call(self._create(args))
        except BaseException:
            self._stop_loop()
            raise
        model_config = self._llm.model_config
        self.vocab_size = model_config.get_vocab_size()
        self.max_seq_len = model_config.max_model_len
        if not 0 <= eos_token_id < self.vocab_size:
            self.shutdown()
            raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary")

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Path | str,
        options: LLMEngineOptions | None = None,
        *,
        dtype: str | None = None,
        max_batch_size: int = 8,
        **overrides,
    ) -> VllmEngine:
        options = options or LLMEngineOptions(engine="vllm")
        eos = _checkpoint_config(Path(checkpoint)).get("eos_token_id", 3)
        args = engine_args(checkpoint, options, dtype=dtype, max_batch_size=max_batch_size, **overrides)
        return cls(args, eos_token_id=eos[0] if isinstance(eos, list) else eos)

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # --- GenerationEngine ---------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> TokenStream:
        request.validate(self.vocab_size, self.max_seq_len)
        ids = [int(t) for t in request.prompt_ids]
        params = vllm_sampling_params(
            request.sampling,
            eos_token_id=self.eos_token_id,
            max_tokens=min(request.sampling.max_new_tokens, self.max_seq_len - len(ids)),
            vocab_size=self.vocab_size,
        )
        stream = VllmTokenStream(request.request_id, self._loop)
        with self._lock:
            if self._stopping:
                raise RuntimeError("the engine is shut down")
            self._streams.add(stream)
        # vLLM appends a random suffix to the id it uses inside; ours only has to be readable in its logs.
        vllm_id = f"{request.request_id or 'request'}-{next(self._ids)}"
        try:
            with _as_value_error():
                self._call(self._add(stream, vllm_id, ids, params))
        except BaseException:
            with self._lock:
                self._streams.discard(stream)
            raise
        return stream

    def generate(self, requests: list[GenerationRequest]) -> list[list[int]]:
        for request in requests:  # all or nothing, as the native engine
            request.validate(self.vocab_size, self.max_seq_len)
        streams = [self.submit(request) for request in requests]
        return [list(stream) for stream in streams]

    def top_logprobs(self, prompt_ids: Sequence[int], params: VllmSamplingParams) -> list[dict[int, float]]:
        """Run one request with vLLM's own ``params`` (``logprobs=k``) and return, per generated step, the top ids
        with their values: log-probabilities, or raw logits for an engine built with ``logprobs_mode="raw_logits"``
        (the GPU validation compares those with our model's logits)."""
        params = params.clone()
        params.output_kind = RequestOutputKind.FINAL_ONLY

        async def run():
            final = None
            async for output in self._llm.generate({"prompt_token_ids": [int(t) for t in prompt_ids]}, params, f"probe-{next(self._ids)}"):
                final = output
            return final

        steps = self._call(run()).outputs[0].logprobs or []
        return [{int(token): float(entry.logprob) for token, entry in step.items()} for step in steps]

    def running_requests(self) -> int:
        """Requests vLLM still holds (waiting or running); an aborted or finished request no longer counts."""
        return self._llm.get_num_unfinished_requests()

    def shutdown(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()
        try:
            self._call(self._drain(streams))
        finally:
            try:
                self._llm.shutdown()  # stops the engine core processes; cancels the output task on the loop
                self._call(self._settle(self._llm.output_handler))
            finally:
                self._llm = None  # AsyncLLM.__del__ runs now, not at interpreter exit when its globals are gone
                self._stop_loop()

    # --- event loop side -----------------------------------------------------------------------------------------

    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @staticmethod
    async def _create(args: AsyncEngineArgs) -> AsyncLLM:
        return AsyncLLM.from_engine_args(args)

    async def _add(self, stream: VllmTokenStream, vllm_id: str, ids: list[int], params: VllmSamplingParams) -> None:
        collector = await self._llm.add_request(vllm_id, {"prompt_token_ids": ids}, params)
        stream._task = asyncio.get_running_loop().create_task(self._pump(stream, collector))
        if stream.cancel_requested:  # cancelled while vLLM was accepting it
            stream._task.cancel()

    async def _pump(self, stream: VllmTokenStream, collector) -> None:
        try:
            while True:
                output = collector.get_nowait() or await collector.get()
                completion = output.outputs[0]
                token_ids = list(completion.token_ids)
                reason = completion.finish_reason
                if output.finished and reason == "stop" and token_ids and token_ids[-1] == self.eos_token_id:
                    token_ids.pop()  # the stop id is not part of the output (native engine rule)
                for token_id in token_ids:
                    stream.put(token_id)
                if output.finished:
                    stream.finish(_FINISH_REASONS.get(reason, FINISH_ERROR))
                    return
        except asyncio.CancelledError:
            await self._abort(collector.request_id)
            stream.finish(FINISH_CANCELLED)
        except Exception as exc:  # noqa: BLE001 - the failure belongs to this stream; the engine keeps serving
            await self._abort(collector.request_id)
            stream.finish(FINISH_ERROR, error=exc)
        finally:
            collector.close()
            with self._lock:
                self._streams.discard(stream)

    async def _abort(self, vllm_id: str) -> None:
        try:
            await self._llm.abort(vllm_id, internal=True)
        except Exception:  # noqa: BLE001 - a dead engine has nothing left to free; the stream must still end
            pass

    @staticmethod
    async def _settle(task: asyncio.Task | None) -> None:
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    @staticmethod
    async def _drain(streams: list[VllmTokenStream]) -> None:
        tasks = [s._task for s in streams if s._task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
