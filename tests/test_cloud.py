"""`r1 cloud fit`: the job handed to lightning-sdk (only the SDK's submit calls are replaced)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lightning_sdk")
import lightning_sdk  # noqa: E402

from recipes.cli import cloud  # noqa: E402
from recipes.cli.registry import CONFIG_DIR  # noqa: E402

GRPO = str(CONFIG_DIR / "grpo.yaml")


@pytest.fixture
def submitted(monkeypatch):
    calls = []

    def record(kind):
        def run(**kwargs):
            calls.append((kind, kwargs))
            return type("FakeJob", (), {"link": "https://lightning.ai/fake"})()
        return run

    monkeypatch.setattr(lightning_sdk.Job, "run", record("job"))
    monkeypatch.setattr(lightning_sdk.MMT, "run", record("mmt"))
    return calls


def test_single_machine_job(submitted, capsys):
    code = cloud.main(["fit", "--config", GRPO, "--machine", "L4", "--env", "WANDB_MODE=offline", "--",
                       "--trainer.max_steps", "5"])
    assert code == 0
    ((kind, job),) = submitted
    assert kind == "job" and job["machine"] == lightning_sdk.Machine.L4 and job["name"] == "r1-grpo"
    assert job["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"}
    command = job["command"]
    assert command.startswith("pip install -q -e '.[quant,vllm]' && r1 fit --config ")
    assert "--trainer.max_steps 5" in command and "--trainer.devices 1 --trainer.num_nodes 1" in command
    assert "--trainer.strategy" not in command  # one GPU: no distributed strategy
    assert "submitted r1-grpo on 1 x L4" in capsys.readouterr().out


def test_multi_node_job_uses_mmt_with_ddp_over_all_gpus(submitted):
    assert cloud.main(["fit", "--config", GRPO, "--machine", "H100_X_8", "--num_nodes", "2", "--name", "big",
                       "--interruptible"]) == 0
    ((kind, job),) = submitted
    assert kind == "mmt" and job["num_machines"] == 2 and job["interruptible"] is True and job["name"] == "big"
    assert "--trainer.devices 8 --trainer.num_nodes 2 --trainer.strategy ddp" in job["command"]


def test_dry_run_prints_the_job(submitted, capsys):
    assert cloud.main(["fit", "--config", GRPO, "--machine", "A100_X_4", "--strategy", "fsdp", "--dry_run"]) == 0
    out = capsys.readouterr().out
    spec = json.loads(out[out.index("{"):])
    assert spec["machine"] == "A100_X_4" and "--trainer.devices 4" in spec["command"]
    assert "--trainer.strategy fsdp" in spec["command"] and submitted == []


@pytest.mark.parametrize("argv, message", [
    (["--machine", "H9000"], "--machine 'H9000' is not a Lightning machine type"),
    (["--machine", "L4", "--env", "NOEQUALS"], "--env 'NOEQUALS'; write KEY=VALUE"),
    (["--machine", "CPU", "--num_nodes", "2"], "on CPU machines"),
    (["--machine", "L4", "--", "--model.not_a_key", "1"], "does not parse"),
])
def test_bad_options_fail_before_submitting(submitted, capsys, argv, message):
    assert cloud.main(["fit", "--config", GRPO, *argv]) == 2
    assert message in capsys.readouterr().err and submitted == []
