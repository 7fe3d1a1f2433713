#!/usr/bin/env bash
# Container start: render the model repository from the mounted checkpoints, then serve it on all interfaces.
#   STEPAUDIO_CHECKPOINTS  folder with Step-Audio-TTS-3B/, Step-Audio-Tokenizer/, Step-Audio-Chat/ (default /models)
#   STEPAUDIO_VOICES       preset speakers folder (optional)
#   STEPAUDIO_REPOSITORY   where the rendered repository goes
#   STEPAUDIO_SET          render values, space-separated KEY=VALUE (e.g. "chat_llm_engine=vllm chat_llm_tensor_parallel_size=8")
#   STEPAUDIO_MODELS       render only these served models (space-separated; default all)
#   STEPAUDIO_GPUS         GPU inventory the render plans on (8x80GB; default auto: nvidia-smi; none: no plan)
#   STEPAUDIO_GRPC_HOST    gRPC address (default 0.0.0.0: the port compose publishes; tts_stream is gRPC-only)
#   STEPAUDIO_RENDER_ONLY  1: render and exit (no server) — what the test runs
# Extra arguments go to `python -m stepaudio_server`.
set -euo pipefail
PYTHON=${PYTHON:-python3}
checkpoints=${STEPAUDIO_CHECKPOINTS:-/models}
repository=${STEPAUDIO_REPOSITORY:-/var/lib/stepaudio/model_repository}

if [ ! -d "$checkpoints" ]; then
  echo "error: no checkpoints at $checkpoints (mount them there or set STEPAUDIO_CHECKPOINTS)" >&2
  exit 2
fi
render=("$PYTHON" -m export.render_repository --checkpoints "$checkpoints" --out "$repository"
        --gpus "${STEPAUDIO_GPUS:-auto}")
if [ -n "${STEPAUDIO_VOICES:-}" ]; then render+=(--voices "$STEPAUDIO_VOICES"); fi
for value in ${STEPAUDIO_SET:-}; do render+=(--set "$value"); done
if [ -n "${STEPAUDIO_MODELS:-}" ]; then
  read -r -a models <<< "$STEPAUDIO_MODELS"
  render+=(--only "${models[@]}")
fi
"${render[@]}"

if [ "${STEPAUDIO_RENDER_ONLY:-0}" = "1" ]; then
  exit 0
fi
exec "$PYTHON" -m stepaudio_server --model-repository "$repository" --host 0.0.0.0 \
  --grpc-host "${STEPAUDIO_GRPC_HOST:-0.0.0.0}" "$@"
