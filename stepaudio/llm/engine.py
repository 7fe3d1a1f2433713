"""Step1 generation: requests, token streams, the engine interface and the PyTorch continuous-batching engine.

Usage::

    engine = TorchStep1Engine.from_checkpoint(folder, dtype="bf16", device="cuda", max_batch_size=8)
    stream = engine.submit(GenerationRequest(prompt_ids, SamplingParams(seed=7)))
    for token_id in stream:          # ids as they are produced; the stop id (<|EOT|>) is not yielded
        ...
    stream.finish_reason             # "eos" | "length" | "cancelled" | "error"
    engine.generate([req1, req2])    # blocking: one id list per request
    engine.shutdown()

Rules:

- A prompt must be non-empty, hold ids in ``[0, vocab_size)`` and be shorter than ``max_seq_len`` (at least one
  position left to generate into). Generation stops at ``max_new_tokens`` *or* when prompt + output reaches
  ``max_seq_len`` (finish reason "length"), like HF's ``max_length``; it does not reject the request up front.
- The stop id defaults to the config's ``eos_token_id`` (3, ``<|EOT|>``).
- Continuous batching: one scheduler thread. Between two decode steps it drops cancelled/finished sequences,
  admits waiting requests into free cache slots (their prompts are prefilled together, right-padded, in
  chunks of ``prefill_chunk`` positions — fewer when the chunk's attention bias would exceed
  ``PREFILL_BIAS_BUDGET`` elements), then runs **one** forward for all active sequences. Each sequence
  has its own cache slot and absolute positions, so its logits do not depend on the batch beyond float
  rounding, and its own ``torch.Generator`` (``SamplingParams.seed``), so its samples never do.
"""

from __future__ import annotations

import heapq
import numbers
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch

from stepaudio.llm.model import Step1ForCausalLM
from stepaudio.llm.sampling import SamplingParams, new_generator, next_token
from stepaudio.llm.weights import load_step1

FINISH_EOS, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = "eos", "length", "cancelled", "error"
_END = object()
PREFILL_BIAS_BUDGET = 1 << 26  # bias elements per prefill forward: 128 MB in bf16


@dataclass
class GenerationRequest:
    prompt_ids: Sequence[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""

    def validate(self, vocab_size: int, max_seq_len: int) -> None:
        # Lists, tuples and 1-D numpy arrays (what the Triton adapters hold) are accepted.
        if isinstance(self.prompt_ids, (str, bytes)) or not hasattr(self.prompt_ids, "__len__"):
            raise ValueError(f"prompt_ids must be a sequence of token ids, got {type(self.prompt_ids).__name__}")
        if len(self.prompt_ids) == 0:
            raise ValueError("prompt_ids is empty")
        for token_id in self.prompt_ids:
            if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
                raise ValueError(f"prompt_ids must hold integers, got {token_id!r}")
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"prompt token id {token_id} is outside the vocabulary [0, {vocab_size})")
        if len(self.prompt_ids) >= max_seq_len:
            raise ValueError(
                f"prompt has {len(self.prompt_ids)} tokens; max_seq_len {max_seq_len} leaves no room to generate"
            )
        if not isinstance(self.sampling, SamplingParams):
            raise ValueError(f"sampling must be SamplingParams, got {type(self.sampling).__name__}")
        self.sampling.validate()


class TokenStream:
    """Iterator over the ids of one request as they are produced. ``cancel()`` ends the iteration at once and
    makes the engine free the request's slot before its next step. Iterating a stream that failed raises
    ``RuntimeError`` (after the ids produced before the failure).

    Producer side (engines): ``put(token_id)`` and ``finish(reason, error=None)``; poll ``cancel_requested``.
    """

    def __init__(self, request_id: str = ""):
        self.request_id = request_id
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.admitted_at_step: int | None = None  # engine decode-step counter when the request joined the batch
        self.finished_at_step: int | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._done = threading.Event()

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self._cancel.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later next() calls end too
            if self.finish_reason == FINISH_ERROR:
                raise RuntimeError(f"generation of request {self.request_id!r} failed: {self.error}") from self.error
            raise StopIteration
        return item

    def ready(self) -> list[int]:
        """The ids already queued behind the one just read, without waiting (the end stays queued): a consumer that
        was busy sending takes what the engine made meanwhile in one go."""
        ids = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return ids
            if item is _END:
                self._queue.put(_END)  # nothing follows the end: it stays last
                return ids
            ids.append(item)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine has finished the request; False on timeout."""
        return self._done.wait(timeout)

    def put(self, token_id: int) -> None:
        self._queue.put(token_id)

    def finish(self, reason: str, step: int | None = None, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        self.finish_reason, self.finished_at_step, self.error = reason, step, error
        self._done.set()
        self._queue.put(_END)


@runtime_checkable  # the tests check both engines against it
class GenerationEngine(Protocol):
    """What the served LLM models call; ``TorchStep1Engine`` and ``stepaudio.llm.vllm_engine.VllmEngine`` implement
    it (``engine_factory.build_engine`` picks one per model).

    The vLLM implementation (upstream vLLM has ``Step1ForCausalLM`` with ``use_alibi_sqrt=True``) maps:

    - ``hf_overrides={"tie_word_embeddings": False}``: the published config.json has no such key, HF's default
      is True, and vLLM's Step1 then ties ``lm_head`` to ``embed_tokens`` and ignores the stored ``lm_head.weight``;
    - ``SamplingParams``: temperature (0 = greedy), ``top_k`` (pass 50 explicitly — vLLM's default is no top-k,
      the reference inherits HF's 50), ``top_p``, ``max_tokens=max_new_tokens``, ``seed``,
      ``stop_token_ids=[3]`` with the stop id excluded from the output, ``detokenize=False``;
    - the repetition-aware rule as a vLLM logits processor over prompt + output ids, settings in ``extra_args``;
    - ``max_model_len`` as ``max_seq_len``; tensor-parallel size must divide the heads (48 / 96) and divide or
      be a multiple of the KV groups (4 / 8);
    - a pump task per request pushes ids into a ``TokenStream``; its ``cancel()`` aborts the vLLM request.
    """

    max_seq_len: int
    vocab_size: int

    def submit(self, request: GenerationRequest) -> TokenStream:
        """Validate (``ValueError``) and queue ``request``; thread-safe."""
        ...

    def generate(self, requests: list[GenerationRequest]) -> list[list[int]]:
        """Run ``requests`` together and block until all are done; one id list per request."""
        ...

    def shutdown(self) -> None: ...


@dataclass
class _Sequence:
    request: GenerationRequest
    stream: TokenStream
    context: list[int]  # prompt + generated ids; all but the last are in the KV cache
    generator: torch.Generator
    slot: int = -1
    generated: int = 0


class TorchStep1Engine:
    def __init__(
        self,
        model: Step1ForCausalLM,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        prefill_chunk: int = 512,
        eos_token_id: int | None = None,
    ):
        config = model.config
        for name, value in (("max_batch_size", max_batch_size), ("prefill_chunk", prefill_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_seq_len is not None and (not isinstance(max_seq_len, int) or not 2 <= max_seq_len <= config.max_seq_len):
            raise ValueError(f"max_seq_len must be in [2, {config.max_seq_len}], got {max_seq_len!r}")
        self.model = model
        self.vocab_size = config.vocab_size
        self.max_seq_len = max_seq_len or config.max_seq_len
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.eos_token_id = config.eos_token_id if eos_token_id is None else eos_token_id
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(f"eos_token_id {self.eos_token_id} is outside the vocabulary")
        self.decode_steps = 0
        self._device = model.lm_head.weight.device
        self._pad_id = config.pad_token_id
        self._cache = model.new_cache(max_batch_size, self.max_seq_len)
        self._free_slots = list(range(max_batch_size))  # a heap: the lowest free slot first keeps slots contiguous
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="step1-scheduler", daemon=True)
        self._thread.start()

    @classmethod
    def from_checkpoint(
        cls,
        path: Path | str,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device = "cpu",
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        prefill_chunk: int = 512,
    ) -> TorchStep1Engine:
        model = load_step1(path, dtype=dtype, device=device)
        return cls(model, max_batch_size=max_batch_size, max_seq_len=max_seq_len, prefill_chunk=prefill_chunk)

    def __enter__(self) -> TorchStep1Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def submit(self, request: GenerationRequest) -> TokenStream:
        request.validate(self.vocab_size, self.max_seq_len)
        stream = TokenStream(request.request_id)
        sequence = _Sequence(
            request=request,
            stream=stream,
            context=[int(t) for t in request.prompt_ids],
            generator=new_generator(request.sampling.seed, self._device),
        )
        with self._wakeup:
            if self._stopping:
                raise RuntimeError("the engine is shut down")
            self._waiting.append(sequence)
            self._wakeup.notify()
        return stream

    def generate(self, requests: list[GenerationRequest]) -> list[list[int]]:
        for request in requests:  # all or nothing: reject a bad batch before queuing any of it
            request.validate(self.vocab_size, self.max_seq_len)
        streams = [self.submit(request) for request in requests]
        return [list(stream) for stream in streams]

    def shutdown(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()

    # --- scheduler thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while not (self._stopping or self._waiting or self._active):
                        self._wakeup.wait()
                    if self._stopping:
                        break
                    joining = self._admit()
                try:
                    self._retire([s for s in self._active if s.stream.cancel_requested], FINISH_CANCELLED)
                    if joining:
                        self._active += joining
                        self._prefill(joining)
                    if self._active:
                        self._decode()
                except Exception as exc:  # the failure goes to every affected stream; the loop keeps serving
                    self._retire(list(self._active), FINISH_ERROR, exc)
            with self._wakeup:
                leftover = list(self._waiting) + self._active
                self._waiting.clear()
            self._retire(leftover, FINISH_CANCELLED)

    def _admit(self) -> list[_Sequence]:
        # Called with the lock held: cancelled waiting requests end here, the rest take free slots in order.
        for sequence in [s for s in self._waiting if s.stream.cancel_requested]:
            self._waiting.remove(sequence)
            sequence.stream.finish(FINISH_CANCELLED, self.decode_steps)
        joining = []
        while self._waiting and self._free_slots:
            sequence = self._waiting.popleft()
            sequence.slot = heapq.heappop(self._free_slots)
            sequence.stream.admitted_at_step = self.decode_steps
            joining.append(sequence)
        return joining

    def _retire(self, sequences: list[_Sequence], reason: str, error: BaseException | None = None) -> None:
        for sequence in sequences:
            if sequence in self._active:
                self._active.remove(sequence)
            if sequence.slot >= 0:
                with self._wakeup:
                    heapq.heappush(self._free_slots, sequence.slot)
                sequence.slot = -1
            sequence.stream.finish(reason, self.decode_steps, error)

    def _prefill(self, joining: list[_Sequence]) -> None:
        lengths = [len(s.context) for s in joining]
        last_hidden: list[torch.Tensor | None] = [None] * len(joining)
        start = 0
        while start < max(lengths):
            rows = [i for i, length in enumerate(lengths) if length > start]
            width = min(self._prefill_width(len(rows), start), max(lengths[i] for i in rows) - start)
            ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
            for row, i in enumerate(rows):
                piece = joining[i].context[start : start + width]
                ids[row, : len(piece)] = torch.tensor(piece)
            positions = (start + torch.arange(width, device=self._device)).expand(len(rows), width)
            hidden = self.model.model(ids.to(self._device), positions, self._cache, [joining[i].slot for i in rows])
            for row, i in enumerate(rows):
                if start <= lengths[i] - 1 < start + width:
                    last_hidden[i] = hidden[row, lengths[i] - 1 - start]
            start += width
        logits = self.model.lm_head(torch.stack(last_hidden)).float()
        self._sample(joining, logits)

    def _prefill_width(self, rows: int, start: int) -> int:
        """Positions per prefill forward: ``prefill_chunk``, halved while the chunk's attention bias
        (rows × heads × width × keys) would exceed ``PREFILL_BIAS_BUDGET`` elements (long prompts)."""
        heads = self.model.config.num_attention_heads
        width = self.prefill_chunk
        while width > 1 and rows * heads * width * (start + width) > PREFILL_BIAS_BUDGET:
            width //= 2
        return width

    def _decode(self) -> None:
        active = sorted(self._active, key=lambda s: s.slot)
        ids = torch.tensor([[s.context[-1]] for s in active], device=self._device)
        positions = torch.tensor([[len(s.context) - 1] for s in active], device=self._device)
        hidden = self.model.model(ids, positions, self._cache, [s.slot for s in active])
        logits = self.model.lm_head(hidden[:, 0]).float()
        self.decode_steps += 1
        self._sample(active, logits)

    def _sample(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        for sequence, row in zip(sequences, logits):
            params = sequence.request.sampling
            token_id = next_token(row, sequence.context, params, sequence.generator)
            if token_id == self.eos_token_id:
                self._retire([sequence], FINISH_EOS)
                continue
            sequence.context.append(token_id)
            sequence.generated += 1
            sequence.stream.put(token_id)
            if sequence.generated >= params.max_new_tokens or len(sequence.context) >= self.max_seq_len:
                self._retire([sequence], FINISH_LENGTH)
