"""Two DDP processes on CPU (gloo) end with identical weights, equal to one process training on the whole batch:
the loss normalisation is global (rows and tokens averaged over ranks), not per rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_rank_worker

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _run(model_dir, out_dir, loss_type, devices):
    return run_rank_worker(WORKER, model_dir, out_dir, loss_type, devices)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_two_ddp_ranks_match_one_process(tiny_model_path, tmp_path, loss_type):
    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(str(tiny_model_path)).named_parameters())
    (single,) = _run(tiny_model_path, tmp_path / "one", loss_type, 1)
    rank0, rank1 = _run(tiny_model_path, tmp_path / "two", loss_type, 2)
    moved = max((single[k] - initial[k].detach()).abs().max().item() for k in single)
    assert moved > 1e-4, "the step did not change the weights"
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), f"{key}: ranks diverged"
        step_single = single[key] - initial[key].detach()  # SGD(lr=1): the update is minus the gradient
        step_ddp = rank0[key] - initial[key].detach()
        torch.testing.assert_close(step_ddp, step_single, rtol=1e-4, atol=1e-7, msg=f"{key}: DDP != single process")
