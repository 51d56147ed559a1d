"""FSDP2 (`modules.distributed.FSDP2Strategy`) on 2 CPU processes (gloo): after one SGD step the gathered weights
equal one process training on the whole batch (full fine-tune with gradient clipping, and LoRA with the KL
reference); generation inside the step works with ranks generating different numbers of tokens; a checkpoint saved
under FSDP resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_rank_worker

WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"


def _run(model_dir, out_dir, mode, devices, *extra):
    return run_rank_worker(WORKER, model_dir, out_dir, mode, devices, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_fsdp_ranks_match_one_process(tiny_model_path, tmp_path, mode):
    resume = ("resume",) if mode == "full" else ()
    (single,) = _run(tiny_model_path, tmp_path / "one", mode, 1)
    rank0, rank1 = _run(tiny_model_path, tmp_path / "two", mode, 2, *resume)
    assert rank0["sharded"] and rank1["sharded"] and not single["sharded"]

    # generation inside the step: rank 1 generated 5 more tokens than rank 0, both equal to an unsharded model
    assert rank0["generated"].shape[1] <= 3 < rank1["generated"].shape[1] <= 8
    for out in (rank0, rank1):
        assert torch.equal(out["generated"], out["expected"])

    # the step: SGD(lr=1), so the update is minus the gradient of the whole batch, for full clipped to norm 0.05
    # by the global norm (a norm of each rank's shard alone would differ from one process)
    if mode == "full":
        assert single["grad_norm"] > 0.1 and rank0["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4)
    weights = rank0["weights"]
    assert weights.keys() == single["weights"].keys() and weights, "trainable weights differ"
    from transformers import AutoModelForCausalLM

    start = dict(AutoModelForCausalLM.from_pretrained(str(tiny_model_path)).named_parameters())
    moved = 0.0
    for key, value in single["weights"].items():
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6, msg=f"{key}: FSDP != single process")
        base = start.get(key.removeprefix("base_model.model."))
        if base is not None:
            moved = max(moved, (value - base.detach()).abs().max().item())
        else:  # a LoRA weight: B starts at 0
            moved = max(moved, value.abs().max().item() if "lora_B" in key else 0.0)
    assert moved > 1e-4, "the step did not change the weights"

    if resume:
        assert rank0["resumed_global_step"] == 2
        saved = torch.load(rank0["checkpoint"], weights_only=True)["state_dict"]
        assert {k.removeprefix("policy.model.") for k in saved} == set(weights), "checkpoint != trainable weights"
        for key, value in weights.items():
            torch.testing.assert_close(saved[f"policy.model.{key}"], value)
            torch.testing.assert_close(rank0["resumed_start"][key], value, msg=f"{key}: not restored on resume")
