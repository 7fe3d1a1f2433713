#!/usr/bin/env bash
# perf_analyzer of the served Triton release (the binary in the tritonclient wheel of that release, the version from
# stepaudio_contract.compat.DEFAULT_VERSION; installed in its own venv so the project's client is not downgraded)
# against a running server. Usage:
#   bench/perf_analyzer.sh --install                                   # install only (`make perf-analyzer`)
#   bench/perf_analyzer.sh ensemble_tts [extra perf_analyzer args]     # offline, HTTP through the guard, batch 1
#   bench/perf_analyzer.sh tts_stream   [extra perf_analyzer args]     # decoupled, gRPC streaming
# Environment: STEPAUDIO_ADMIN_KEY (the operator's key, HTTP through the guard; perf_analyzer reads model configs, an
# admin API), STEPAUDIO_GRPC_ADMIN_KEY (gRPC reaches Triton directly: its per-start key, in the file the launcher prints),
# STEPAUDIO_HTTP_URL / STEPAUDIO_GRPC_URL (default 127.0.0.1:8000 / :8001), PERF_MAX_NEW_TOKENS (ids per request).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=build/perf_analyzer
binary=$tools/venv/bin/perf_analyzer
if [ ! -x "$binary" ]; then
  python3 -m venv "$tools/venv"
  release=$(.venv/bin/python -c "from stepaudio_contract.compat import DEFAULT_VERSION as v; print(v)")
  "$tools/venv/bin/pip" install -q "tritonclient[all]==$release.0"
fi
# perf_analyzer needs libb64.so.0d and libcudart.so.12: link them from the pytriton wheel (docs/triton-on-cpu.md#perf_analyzer).
libs=$(.venv/bin/python -c "import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parents[1] / 'nvidia_pytriton.libs')")
mkdir -p "$tools/lib"
ln -sf "$libs"/libb64-*.so.0d "$tools/lib/libb64.so.0d"
ln -sf "$libs"/libcudart-*.so.12* "$tools/lib/libcudart.so.12"
export LD_LIBRARY_PATH="$PWD/$tools/lib:${LD_LIBRARY_PATH:-}"
model=${1:?model name: ensemble_tts or tts_stream (or --install)}; shift
if [ "$model" = --install ]; then
  "$binary" --version >/dev/null 2>&1 || "$binary" --help >/dev/null
  echo "$binary"
  exit 0
fi
inputs=build/perf/$$
.venv/bin/python -m clients.perf_inputs --out "$inputs" --max-new-tokens "${PERF_MAX_NEW_TOKENS:-120}" >/dev/null
trap 'rm -rf "$inputs"' EXIT
key=${STEPAUDIO_ADMIN_KEY:-}
common=(-s 30 --measurement-interval 20000)
if [ "$model" = tts_stream ]; then
  # Over gRPC, Triton's restricted-protocol header carries the gRPC prefix (stepaudio_server/launcher.py GRPC_HEADER_PREFIX).
  admin=()
  grpc_key=${STEPAUDIO_GRPC_ADMIN_KEY:-$key}
  if [ -n "$grpc_key" ]; then admin=(-H "triton-grpc-protocol-stepaudio-admin-key:$grpc_key"); fi
  "$binary" -m tts_stream -i grpc -u "${STEPAUDIO_GRPC_URL:-127.0.0.1:8001}" --streaming \
    --input-data "$inputs/tts_stream.json" "${common[@]}" "${admin[@]}" "$@"
else
  admin=()
  if [ -n "$key" ]; then admin=(-H "stepaudio-admin-key:$key"); fi
  "$binary" -m "$model" -i http -u "${STEPAUDIO_HTTP_URL:-127.0.0.1:8000}" -b 1 \
    --input-data "$inputs/ensemble_tts.json" "${common[@]}" "${admin[@]}" "$@"
fi
