PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKPOINTS ?= build/checkpoints
REPOSITORY ?= build/model_repository

.PHONY: test lint serve demo checkpoints repository clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check stepaudio stepaudio_triton model_repository backends export clients gateway bench tests

checkpoints: $(STAMP)
	$(PY) -m stepaudio.checkpoints make-tiny --out $(CHECKPOINTS)

demo: $(STAMP)
	$(PY) -m clients.demo --build build

serve: $(STAMP)
	$(PY) -m stepaudio.serve --model-repository $(if $(wildcard $(REPOSITORY)),$(REPOSITORY),model_repository)

clean:
	rm -rf build $(VENV)
