"""Reliability: bad values fail at construction with one line, numbers that overflow are handled, slow rewards
time out by name, a non-finite gradient never reaches the weights."""

from __future__ import annotations

import math
from pathlib import Path
import time

import lightning as L
import pytest
import torch

from modules.objectives import ObjectiveSettings, compute_advantages, policy_loss
from modules.optim import OptimizerSettings
from modules.rewards import RewardError, RewardSet, RewardSpec
from modules.rollout.engine import SamplingSettings
from modules.settings import SettingsError
from recipes.base import BatchSettings


# ---------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("make, match", [
    (lambda: OptimizerSettings(max_grad_norm=-1.0), "model.optimizer.max_grad_norm=-1.0; it must be > 0.0"),
    (lambda: OptimizerSettings(max_grad_norm=0.0), "model.optimizer.max_grad_norm=0.0"),
    (lambda: OptimizerSettings(learning_rate=0.0), "model.optimizer.learning_rate=0.0"),
    (lambda: OptimizerSettings(warmup_steps=-1), "model.optimizer.warmup_steps=-1"),
    (lambda: ObjectiveSettings(beta=-0.1), "model.objective.beta=-0.1"),
    (lambda: ObjectiveSettings(epsilon_low=-0.2), "model.objective.epsilon_low=-0.2"),
    (lambda: ObjectiveSettings(epsilon_high=0.28, delta=1.2), "model.objective.delta=1.2; it must be > 1.28"),
    (lambda: SamplingSettings(top_p=1.5), "model.sampling.top_p=1.5"),
    (lambda: SamplingSettings(top_p=0.0), "model.sampling.top_p=0.0"),
    (lambda: SamplingSettings(top_k=-1), "model.sampling.top_k=-1"),
    (lambda: SamplingSettings(temperature=0.0), "model.sampling.temperature=0.0"),
    (lambda: SamplingSettings(max_new_tokens=0), "model.sampling.max_new_tokens=0"),
    (lambda: SamplingSettings(stop=[""]), "model.sampling.stop=['']"),
    (lambda: BatchSettings(micro_batch_size=0), "model.batching.micro_batch_size=0"),
    (lambda: BatchSettings(num_iterations="2"), "model.batching.num_iterations='2'; give an integer"),
])
def test_bad_settings_are_one_line_errors_naming_the_field(make, match):
    with pytest.raises(SettingsError) as err:
        make()
    assert match in str(err.value) and "\n" not in str(err.value)


def test_bad_recipe_values_fail_before_the_model_loads():
    from recipes.grpo import GRPO

    started = time.perf_counter()  # "no-such-model" would fail to load: the settings fail first
    for kwargs, match in ((dict(num_generations="4"), "model.num_generations='4'"),
                          (dict(generation_batch_size=0), "model.generation_batch_size=0"),
                          (dict(objective={"loss_type": "grpo2"}), "model.objective.loss_type='grpo2'"),
                          (dict(sampling={"top_p": 2.0}), "model.sampling.top_p=2.0"),
                          (dict(optimizer={"lr": 1e-5}), "model.optimizer")):
        with pytest.raises(SettingsError, match=match):
            GRPO("no-such-model", rewards=["accuracy"], **kwargs)
    assert time.perf_counter() - started < 5


# ---------------------------------------------------------------------------------------------- numerics
def test_kl_on_padding_positions_gives_a_finite_gradient():
    """A padding position with the reference at -100 and the policy at 0: exp(100) overflows in float32. The loss
    masks it out, and its gradient must stay finite too (0 * inf = NaN before the fix)."""
    logps = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)  # (1, 3), position 2 is padding
    ref = torch.tensor([[-1.5, -1.0, -100.0]])
    old = torch.tensor([[-1.0, -2.0, 90.0]])  # a stale value at padding: exp(-90) is harmless, exp(+90) is not
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = policy_loss(logps, old, torch.tensor([1.0]), mask, beta=0.1, ref_logps=ref)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert logps.grad[0, 2] == 0.0
    # the real tokens' loss is unchanged: k3 of the two trained tokens, mean over the sequence
    d = torch.tensor([-0.5, 1.0])
    expected = -1.0 + 0.1 * float((torch.exp(d) - d - 1).mean())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_rewards_near_the_float32_range_keep_their_advantages():
    rewards = torch.tensor([3e38, -3e38, 1.0, 2.0])
    adv = compute_advantages("grpo", rewards, 2, scale="group")
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
    assert adv.tolist() == pytest.approx([0.7071, -0.7071, -0.7070, 0.7070], abs=1e-3)  # not silently 0
    with pytest.raises(ValueError, match="non-finite advantages"):
        compute_advantages("rloo", torch.tensor([3e38, -3e38]), 2)  # 2 * 3e38 overflows float32


# ---------------------------------------------------------------------------------------------- rewards
def _slow(prompts, completions, **kw):
    time.sleep(2.0)
    return [1.0] * len(completions)


def _fast(prompts, completions, **kw):
    return [0.5] * len(completions)


def test_a_hanging_reward_times_out_by_name_or_scores_none():
    import modules.rewards.registry as registry

    registry._REGISTRY["slow_test_reward"] = _slow
    registry._REGISTRY["fast_test_reward"] = _fast
    try:
        rs = RewardSet.from_specs([RewardSpec("slow_test_reward", timeout=0.2), "fast_test_reward"])
        started = time.perf_counter()
        with pytest.raises(RewardError, match=r"reward 'slow_test_reward' did not return within its timeout of 0.2 s"):
            rs(["p"], ["c"])
        assert time.perf_counter() - started < 1.5
        rs = RewardSet.from_specs([RewardSpec("slow_test_reward", timeout=0.2, on_timeout="none"), "fast_test_reward"])
        with pytest.warns(RuntimeWarning, match="slow_test_reward"):
            per_func, total, seconds = rs.score(["p", "q"], ["c", "d"])
        assert torch.isnan(per_func[:, 0]).all() and total.tolist() == [0.5, 0.5]
        assert 0.15 < seconds["slow_test_reward"] < 1.5 and seconds["fast_test_reward"] < 0.2
        with pytest.raises(ValueError, match="timeout=-1"):
            RewardSpec("fast_test_reward", timeout=-1)
    finally:
        del registry._REGISTRY["slow_test_reward"], registry._REGISTRY["fast_test_reward"]


# ---------------------------------------------------------------------------------------------- gradients
def test_a_non_finite_gradient_is_skipped_loudly_and_never_reaches_the_weights(tiny_model_path, tmp_path):
    from datamodules import PromptDataModule
    from lightning.pytorch.loggers import CSVLogger

    from recipes.grpo import GRPO

    class NaNGradient(GRPO):
        def loss(self, micro, *, mini_rows, mini_tokens):
            loss, metrics = super().loss(micro, mini_rows=mini_rows, mini_tokens=mini_tokens)
            p = next(self.policy.trainable_parameters())
            # forward 0, gradient 0 * inf = NaN: a finite loss whose backward poisons every weight it touches
            return loss + torch.where(p > 1e9, torch.log(p - p), torch.zeros_like(p)).sum(), metrics

    L.seed_everything(0)
    recipe = NaNGradient(str(tiny_model_path), rewards=["accuracy"], num_generations=2,
                         sampling={"max_new_tokens": 4}, batching={"skip_zero_signal_steps": False})
    before = {n: p.detach().clone() for n, p in recipe.named_parameters() if p.requires_grad}
    data = PromptDataModule(task="arithmetic", num_rows=16, batch_size=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    with pytest.warns(UserWarning, match="non-finite gradient norm"):
        trainer.fit(recipe, datamodule=data)
    after = dict(recipe.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items())  # no update, no NaN
    assert float(trainer.callback_metrics["train/nonfinite_grad_updates"]) == 1.0
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


# ---------------------------------------------------------------------------------------------- the command line
def _r1(capsys, *argv: str) -> tuple[int, str]:
    from recipes.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code or 0
    return code, capsys.readouterr().err


def _fit_args(model, root, *extra):
    return ["fit", "--config", "recipes/configs/grpo.yaml", "--model.model_name_or_path", str(model),
            "--trainer.default_root_dir", str(root), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", str(root), "--trainer.callbacks", "[]", "--trainer.enable_progress_bar",
            "false", "--model.sampling.max_new_tokens", "4", "--model.num_generations", "2", "--data.batch_size",
            "2", "--data.num_rows", "16", "--data.val_size", "0", "--model.batching.skip_zero_signal_steps", "false",
            *extra]


def test_resume_applies_the_options_given_and_refuses_a_structural_change(tiny_model_path, tmp_path, capsys):
    import pandas as pd

    assert _r1(capsys, *_fit_args(tiny_model_path, tmp_path / "a", "--trainer.max_steps", "1"))[0] == 0
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    # "lower the learning rate and resume": Lightning's CLI would silently restore 1e-5 from the checkpoint
    code, err = _r1(capsys, *_fit_args(tiny_model_path, tmp_path / "b", "--trainer.max_steps", "2",
                                       "--ckpt_path", str(ckpt), "--model.optimizer.learning_rate=-1e-3"))
    assert code == 2 and err.count("\n") == 1 and "model.optimizer.learning_rate=-0.001" in err  # read as a number
    code, err = _r1(capsys, *_fit_args(tiny_model_path, tmp_path / "b", "--trainer.max_steps", "2",
                                       "--ckpt_path", str(ckpt), "--model.optimizer.learning_rate", "3e-6"))
    assert code == 0
    metrics = pd.read_csv(next((tmp_path / "b").rglob("metrics.csv")))
    lrs = metrics["train/lr"].dropna().tolist()
    assert lrs == [pytest.approx(3e-6)]  # the resumed step ran with the new learning rate
    code, err = _r1(capsys, *_fit_args(tiny_model_path, tmp_path / "c", "--trainer.max_steps", "2",
                                       "--ckpt_path", str(ckpt), "--model.lora", "{r: 2, alpha: 4}"))
    assert code == 2 and "was trained with model.lora.alpha=32, not 4;" in err and err.count("\n") == 1


def test_unreadable_inputs_are_one_line_errors(tiny_model_path, tmp_path, capsys):
    ckpt = tmp_path / "truncated.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    latin1 = tmp_path / "rows.jsonl"
    latin1.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    cases = [
        (["--ckpt_path", str(ckpt)], "truncated.ckpt' cannot be read"),
        (["--ckpt_path", str(tmp_path / "missing.ckpt")], "missing.ckpt' is not a file"),
        (["--model.model_name_or_path", str(empty)], "has no config.json (it holds nothing)"),
        (["--model.model_name_or_path", "someone/not-cached-model"], "the hub is offline (HF_HUB_OFFLINE=1)"),
        (["--data.source", str(latin1), "--data.task", "null"], "rows.jsonl': line 2 is not UTF-8 (byte 0xe9"),
        (["--model.rewards", "[{name: no_such_module.fn}]"], "PYTHONPATH=. r1 fit"),
        (["--model.sampling.top_p", "1.5"], "model.sampling.top_p=1.5; it must be <= 1.0"),
    ]
    for extra, match in cases:
        code, err = _r1(capsys, *_fit_args(tiny_model_path, tmp_path / "run", "--trainer.max_steps", "1", *extra))
        lines = [ln for ln in err.splitlines() if ln.startswith("r1: error")]
        assert code == 2 and match in err and len(lines) == 1 and "Traceback" not in err, (extra, err[-400:])


def test_sigterm_during_held_out_evaluation_stops_promptly_with_a_checkpoint(tiny_model_path, tmp_path):
    """A cluster preempts with SIGTERM, then kills: r1 fit must stop within seconds, also mid-evaluation, and
    leave a checkpoint that resumes."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "marker_reward.py").write_text(
        "import os, pathlib, time\n"
        "def marked(prompts, completions, **kw):\n"
        "    pathlib.Path(os.environ['R1_MARKER']).touch()\n"
        "    time.sleep(0.3)  # a slow judge: 64 held-out chunks take ~20 s\n"
        "    return [0.0] * len(completions)\n")
    marker = tmp_path / "evaluating"
    root = tmp_path / "run"
    env = {**os.environ, "R1_MARKER": str(marker), "PYTHONPATH": f"{tmp_path}:{Path.cwd()}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "recipes.cli", *_fit_args(
        tiny_model_path, root, "--trainer.max_steps", "5", "--data.val_size", "64", "--data.num_rows", "96",
        "--model.rewards", "[{name: marker_reward.marked}]",
        "--trainer.callbacks", "[{class_path: callbacks.HeldOutEval, init_args: {batch_size: 1}}]")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate()[1][-2000:]
        time.sleep(1.0)  # well inside the ~20 s evaluation
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - sent
    finally:
        proc.kill()
    assert stopped_after < 8, stopped_after
    assert proc.returncode == 143 and "stopped by SIGTERM" in err and "Traceback" not in err, err[-2000:]
    ckpt = next(root.rglob("preempted.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 0 and state["state_dict"]  # evaluation at start: before the first update
    assert not list(root.rglob(".preempted.ckpt.tmp-*"))  # renamed into place, nothing half-written left


# ---------------------------------------------------------------------------------------------- saves
def test_a_failed_save_keeps_the_previous_copy_and_leaves_no_half_file(tmp_path, monkeypatch):
    import errno

    from modules.atomic import AtomicCheckpointIO, SaveError, atomic_path

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(4)}, path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # writes half, then the disk is full
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SaveError, match=r"last.ckpt': No space left on device; free space .*previous copy is kept"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    # a folder (an adapter): an error mid-write leaves the previous folder as it was
    folder = tmp_path / "adapter"
    with atomic_path(folder, directory=True) as tmp:
        (tmp / "weights.bin").write_text("v1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(folder, directory=True) as tmp:
            (tmp / "weights.bin").write_text("v2-partial")
            raise KeyboardInterrupt  # Ctrl-C mid-save
    assert (folder / "weights.bin").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter", "last.ckpt"]
    with atomic_path(folder, directory=True) as tmp:
        (tmp / "weights.bin").write_text("v2")
    assert (folder / "weights.bin").read_text() == "v2"


def test_sigkill_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "saver.py"
    script.write_text(
        "import sys, torch\n"
        "from modules.atomic import AtomicCheckpointIO\n"
        "io, path = AtomicCheckpointIO(), sys.argv[1]\n"
        "io.save_checkpoint({'step': 1, 'w': torch.ones(2)}, path)\n"
        "print('saved', flush=True)\n"
        "io.save_checkpoint({'step': 2, 'w': torch.zeros(60_000_000)}, path)  # 240 MB: killed while writing\n")
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert proc.stdout.readline().strip() == "saved"
    tmp = tmp_path / f".last.ckpt.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(path, weights_only=True)["step"] == 1  # the real name still holds the good checkpoint


def test_an_unwritable_run_directory_is_one_line(tiny_model_path, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = _r1(capsys, *_fit_args(tiny_model_path, blocker / "run", "--trainer.max_steps", "1"))
    assert code == 2 and "trainer.default_root_dir=" in err and "is not writable" in err
    assert len([ln for ln in err.splitlines() if ln.startswith("r1: error")]) == 1 and "Traceback" not in err
