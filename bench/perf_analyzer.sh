#!/usr/bin/env bash
# Installs perf_analyzer 2.51 (from the tritonclient==2.51.0 wheel, in its own venv so the project's client is not
# downgraded) and runs it against a running server. Usage:
#   bench/perf_analyzer.sh ensemble_tts [extra perf_analyzer args]     # offline, HTTP, batch 1
#   bench/perf_analyzer.sh tts_stream   [extra perf_analyzer args]     # decoupled, gRPC streaming
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?model name: ensemble_tts or tts_stream}; shift
tools=build/perf_analyzer
if [ ! -x "$tools/venv/bin/perf_analyzer" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q "tritonclient[all]==2.51.0"
fi
# perf_analyzer needs libb64.so.0d and libcudart.so.12: link them from the pytriton wheel (triton-on-cpu.md).
libs=$(.venv/bin/python -c "import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parents[1] / 'nvidia_pytriton.libs')")
mkdir -p "$tools/lib"
ln -sf "$libs"/libb64-*.so.0d "$tools/lib/libb64.so.0d"
ln -sf "$libs"/libcudart-*.so.12* "$tools/lib/libcudart.so.12"
.venv/bin/python -m clients.perf_inputs --out build/perf >/dev/null
export LD_LIBRARY_PATH="$PWD/$tools/lib:${LD_LIBRARY_PATH:-}"
# perf_analyzer reads the model config, an admin API: send the key the server was started with.
admin=()
if [ -n "${STEPAUDIO_ADMIN_KEY:-}" ]; then admin=(-H "stepaudio-admin-key:$STEPAUDIO_ADMIN_KEY"); fi
if [ "$model" = tts_stream ]; then
  exec "$tools/venv/bin/perf_analyzer" -m tts_stream -i grpc -u 127.0.0.1:8001 --streaming \
    --input-data build/perf/tts_stream.json -s 30 --measurement-interval 20000 "${admin[@]}" "$@"
fi
exec "$tools/venv/bin/perf_analyzer" -m "$model" -u 127.0.0.1:8000 -b 1 \
  --input-data "build/perf/$model.json" -s 30 --measurement-interval 20000 "${admin[@]}" "$@"
