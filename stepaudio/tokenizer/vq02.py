"""vq02: linguistic codes at 16.67 Hz from the Paraformer encoder run in FunASR's streaming chunk mode.

The reference (``get_vq02_code`` → ``infer_encoder``) cuts 16 kHz audio into 3840-sample (240 ms) chunks, all but
the last non-final, pushes each through the online front end and one encoder chunk step, keeps the newest output
frames and assigns each to the nearest row of the k-means codebook ``linguistic_tokenizer.npy`` (Euclidean).
Codes of a chunk are final as soon as the chunk is complete, because nothing later changes them.

Two interchangeable encoder backends run the same chunk step: ``torch`` (``SanmEncoder``) and ``onnx`` (the graph
``export/tokenizer_onnx.py`` writes from it). ONNX graph contract, batch 1, ``L`` layers, ``H`` heads, ``d = D / H``:

    inputs   feats (1, T, 560) f32 · offset (1,) i64 · overlap (1, 5, 560) f32 ·
             kv_cache (L, 2, H, 16, d) f32 · cache_valid (1,) i64
    outputs  encoder_out (1, T, D) f32 · next_offset · next_overlap · next_kv_cache · next_cache_valid
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stepaudio.checkpoints import layout
from stepaudio.tokenizer.features import OnlineFrontend
from stepaudio.tokenizer.funasr_files import ParaformerConfig, load_cmvn, load_paraformer_config
from stepaudio.tokenizer.ort_session import create_session
from stepaudio.tokenizer.sanm import CHUNK_SAMPLES, SanmEncoder

STATE_NAMES = ("offset", "overlap", "kv_cache", "cache_valid")
INPUT_NAMES = ("feats", *STATE_NAMES)
OUTPUT_NAMES = ("encoder_out", *(f"next_{name}" for name in STATE_NAMES))
BACKENDS = ("torch", "onnx")

State = dict[str, np.ndarray]


def load_encoder_weights(model_path: Path, cfg: ParaformerConfig) -> SanmEncoder:
    """Build the encoder and strictly load the ``encoder.*`` tensors of a FunASR ``model.pt`` (others ignored)."""
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model_state_dict", "model"):  # FunASR's load_pretrained_model unwraps these
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    prefix = "encoder."
    weights = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
    encoder = SanmEncoder(cfg.encoder)
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "inv_timescales"]
    if missing or unexpected:
        raise ValueError(f"{model_path}: encoder keys do not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return encoder.eval()


class TorchEncoder:
    def __init__(self, encoder: SanmEncoder):
        self.encoder = encoder

    def initial_state(self) -> State:
        return {k: v.numpy() for k, v in self.encoder.initial_state().items()}

    def step(self, feats: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        with torch.inference_mode():
            out, *new_state = self.encoder(torch.from_numpy(feats), *(torch.from_numpy(state[k]) for k in STATE_NAMES))
        return out[0].numpy(), {k: v.numpy() for k, v in zip(STATE_NAMES, new_state)}


class OnnxEncoder:
    def __init__(self, onnx_path: Path, initial_state: State, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = create_session(onnx_path, options)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise ValueError(f"{onnx_path}: inputs {names} are not the vq02 chunk-step contract {INPUT_NAMES}")
        cache_shape = tuple(self.session.get_inputs()[INPUT_NAMES.index("kv_cache")].shape)
        if cache_shape != initial_state["kv_cache"].shape:
            raise ValueError(f"{onnx_path}: kv_cache {cache_shape} does not match the checkpoint's encoder")
        self._initial = initial_state

    def initial_state(self) -> State:
        return {k: v.copy() for k, v in self._initial.items()}

    def step(self, feats: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        out, *new_state = self.session.run(list(OUTPUT_NAMES), {"feats": feats, **state})
        return out[0], dict(zip(STATE_NAMES, new_state))


class LinguisticTokenizer:
    """Front end + encoder backend + k-means codebook; ``stream()`` starts one utterance."""

    def __init__(self, config: ParaformerConfig, cmvn: tuple[np.ndarray, np.ndarray], encoder, codebook: np.ndarray):
        if codebook.ndim != 2 or codebook.shape[1] != config.encoder.output_size:
            raise ValueError(f"codebook shape {codebook.shape} does not fit encoder width {config.encoder.output_size}")
        if config.frontend.sample_rate != 16000:
            raise ValueError(f"the vq02 front end must run at 16 kHz; config.yaml says {config.frontend.sample_rate}")
        self.config = config
        self.cmvn = cmvn
        self.encoder = encoder
        self.codebook = codebook.astype(np.float64)
        self._codebook_norms = (self.codebook**2).sum(axis=1)

    @classmethod
    def from_dir(cls, tokenizer_dir: Path, backend: str = "onnx", onnx_path: Path | None = None, threads=None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown vq02 backend {backend!r}; expected one of {BACKENDS}")
        paraformer = Path(tokenizer_dir) / layout.PARAFORMER_DIR
        config = load_paraformer_config(paraformer / layout.PARAFORMER_CONFIG)
        cmvn = load_cmvn(paraformer / layout.PARAFORMER_CMVN)
        codebook = np.load(Path(tokenizer_dir) / layout.LINGUISTIC_CODEBOOK)
        if backend == "torch":
            encoder = TorchEncoder(load_encoder_weights(paraformer / layout.PARAFORMER_WEIGHTS, config))
        else:
            onnx_path = Path(onnx_path) if onnx_path else paraformer / layout.VQ02_ENCODER_ONNX
            if not onnx_path.is_file():
                raise FileNotFoundError(
                    f"{onnx_path} not found: export it with `python -m export.tokenizer_onnx --tokenizer-dir "
                    f"{tokenizer_dir}` or use backend='torch'"
                )
            initial = {k: v.numpy() for k, v in SanmEncoder(config.encoder).initial_state().items()}
            encoder = OnnxEncoder(onnx_path, initial, threads)
        return cls(config, cmvn, encoder, codebook)

    def nearest_codes(self, features: np.ndarray) -> list[int]:
        x = features.astype(np.float64)
        distances = self._codebook_norms[None, :] - 2.0 * x @ self.codebook.T  # |x|² is the same for every code
        return distances.argmin(axis=1).tolist()

    def stream(self) -> "LinguisticStream":
        return LinguisticStream(self)


class LinguisticStream:
    """16 kHz samples in, vq02 codes out; each full 240 ms chunk yields its codes at once."""

    def __init__(self, tokenizer: LinguisticTokenizer):
        self._tokenizer = tokenizer
        self._frontend = OnlineFrontend(tokenizer.config.frontend, *tokenizer.cmvn)
        self._state = tokenizer.encoder.initial_state()
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, wave16k: np.ndarray) -> list[int]:
        self._pending = np.concatenate([self._pending, wave16k.astype(np.float32)])
        codes: list[int] = []
        while self._pending.shape[0] >= CHUNK_SAMPLES:
            codes += self._step(self._pending[:CHUNK_SAMPLES], is_final=False)
            self._pending = self._pending[CHUNK_SAMPLES:]
        return codes

    def finish(self) -> list[int]:
        tail, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        return self._step(tail, is_final=True) if tail.shape[0] else []

    def _step(self, chunk: np.ndarray, is_final: bool) -> list[int]:
        feats = self._frontend.process(chunk, is_final)
        if feats.shape[0] == 0:
            return []
        out, self._state = self._tokenizer.encoder.step(feats[None], self._state)
        return self._tokenizer.nearest_codes(out)
